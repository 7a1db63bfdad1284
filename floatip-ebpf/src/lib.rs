//! Stages of the floatip fast path, shared by the XDP and TC entry points
//! in `main.rs`: parse, translate, checksum, ARP, ICMP errors and forward, and the
//! verdict they hand back.
#![no_std]
// Atomic adds for the shared per-association counters: the BPF target has no atomic
// types with read-modify-write in core, but LLVM lowers the intrinsic to BPF_ATOMIC.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// The stages fail with `Err(())`: the only answer to any malformed input is
// to leave the frame to the kernel, so an error carries nothing.
#![allow(clippy::result_unit_err)]

pub mod arp;
pub mod checksum;
pub mod forward;
pub mod frame;
pub mod icmp;
pub mod log;
pub mod maps;
pub mod parse;
pub mod stats;
pub mod translate;
pub mod verdict;
