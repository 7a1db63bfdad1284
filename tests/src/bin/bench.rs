//! `cargo xtask bench`: floatip against nftables NAT and plain forwarding,
//! measured side by side in one run, in namespaces it creates and removes.
//! See BENCHMARKS.md for what it measures and how to read the output.

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> std::process::ExitCode {
    bench::main()
}
