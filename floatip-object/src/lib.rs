//! The eBPF objects floatip loads, embedded (see Cargo.toml for why this is a crate).

/// The data-plane object (`floatip-ebpf`'s `floatip` binary).
pub static FLOATIP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floatip"));
/// Benchmark-only programs (XDP_PASS floor, redirect-only, drop sink, generator).
pub static BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floatip-bench"));
