pub mod fixture;
pub mod malformed;
pub mod netns;
pub mod pkt;
pub mod rng;
pub mod differential;
pub mod model;
