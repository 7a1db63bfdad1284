//! The differential namespace test with the kernel as the oracle (issue 10):
//! generated frames through a floatip gateway (xdp, xdp-generic, tc) and
//! through Linux + nftables DNAT/SNAT, compared field by field; see
//! `tests::oracle` and docs/ORACLE.md.
//!
//! `FLOATIP_ORACLE_CASES=N` runs N cases (default: every class in each of
//! its directions, twice); `FLOATIP_ORACLE_SEED=S` replays a run;
//! `FLOATIP_ORACLE_MODES=xdp,tc` limits the modes. Needs root and a built
//! `floatip` (see xtask/src/test.rs).

use std::path::Path;

use tests::{netns, oracle};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");

#[test]
fn floatip_matches_the_kernel_oracle() {
    netns::require_root();
    let _serial = netns::serialize();
    let floatip = netns::floatip_binary();
    let opt = oracle::Options::from_env(
        2 * oracle::cases::class_count(),
        &floatip,
        Path::new(NETPROBE),
    );
    let report = oracle::run(&opt).unwrap_or_else(|e| panic!("oracle test could not run: {e:#}"));
    eprintln!("{}", report.text());
    assert!(report.passed(), "{}", report.text());
}
