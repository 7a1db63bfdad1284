pub mod pkt;
pub mod netns;
