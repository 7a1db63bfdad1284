pub mod differential;
pub mod fixture;
pub mod malformed;
pub mod model;
pub mod netns;
pub mod oracle;
pub mod pkt;
pub mod rng;
