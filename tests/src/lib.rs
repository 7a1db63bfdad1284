pub mod agent;
pub mod differential;
pub mod fixture;
pub mod malformed;
pub mod model;
pub mod netns;
pub mod pkt;
pub mod rng;
