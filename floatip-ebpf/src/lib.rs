//! Stages of the floatip fast path, shared by the XDP and TC entry points
//! in `main.rs`: parse, translate, checksum, ARP and forward.
#![no_std]

pub mod arp;
pub mod checksum;
pub mod forward;
pub mod frame;
pub mod maps;
pub mod parse;
pub mod stats;
pub mod translate;
