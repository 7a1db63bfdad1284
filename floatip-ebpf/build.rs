//! Fails early with a clear message when bpf-linker is missing: the eBPF
//! object cannot be linked without it (`cargo xtask setup` installs it).
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if which::which("bpf-linker").is_err() {
        println!(
            "cargo:warning=bpf-linker not found on PATH; run `cargo xtask setup` (it builds bpf-linker 0.13 against the nightly toolchain's LLVM)"
        );
    }
}
