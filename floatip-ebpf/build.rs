//! Fails early with a clear message when bpf-linker is missing: the eBPF
//! object cannot be linked without it (`cargo xtask setup` installs it).
fn main() {
    // Codegen happens in bpf-linker. v3 adds 32-bit jumps (fewer
    // instructions; kernel >= 5.1), and misaligned access lets a 4-byte
    // header field be one load instead of four byte loads and shifts (the
    // verifier allows it for packet data on every arch with efficient
    // unaligned access, which is where XDP runs natively).
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
    // Not rerun when PATH changes: `cargo build` by hand and `cargo xtask` (which puts the
    // cargo bin directory first) would otherwise rebuild the objects every time one follows
    // the other. A missing bpf-linker fails the link, which is retried until it works.
    println!("cargo:rerun-if-changed=build.rs");
    if which::which("bpf-linker").is_err() {
        println!(
            "cargo:warning=bpf-linker not found on PATH; run `cargo xtask setup` (it builds bpf-linker 0.13 against the nightly toolchain's LLVM)"
        );
    }
}
