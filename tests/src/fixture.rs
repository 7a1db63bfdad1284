//! The programs loaded for `BPF_PROG_TEST_RUN` with a small association
//! table and one pool, their pins removed on drop (also when a test fails).

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
};

use floatip::dataplane::{TestProgram, TestPrograms};

use crate::pkt::MAC_A;

pub const FIP1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const FIP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const FIXED1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
pub const FIXED2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
pub const UNASSOC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// `BPF_PROG_TEST_RUN` runs with the loopback device as ingress.
pub const LO: u32 = 1;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Every program of the data plane, XDP and TC.
pub const ALL: [TestProgram; 4] = [
    TestProgram::XdpExternal,
    TestProgram::XdpInternal,
    TestProgram::TcExternal,
    TestProgram::TcInternal,
];

pub struct Fixture(Option<TestPrograms>);

impl Fixture {
    /// Two associations (FIP1→FIXED1, FIP2→FIXED2) and the pool
    /// 203.0.113.0/24 with the router's address excluded.
    pub fn new() -> Self {
        Self::with(&[(FIP1, FIXED1), (FIP2, FIXED2)])
    }

    pub fn with(pairs: &[(Ipv4Addr, Ipv4Addr)]) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = format!(
            "/sys/fs/bpf/floatip-t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let progs = TestPrograms::load(dir.as_ref(), 1024, LO, MAC_A).expect("load programs");
        let fx = Fixture(Some(progs));
        let mut dp = fx.progs().dataplane().unwrap();
        for (f, x) in pairs {
            dp.nat_add(*f, *x).unwrap();
        }
        dp.pool_prefix_add(Ipv4Addr::new(203, 0, 113, 0), 24, false)
            .unwrap();
        dp.pool_prefix_add(ROUTER, 32, true).unwrap();
        fx
    }

    pub fn progs(&self) -> &TestPrograms {
        self.0.as_ref().unwrap()
    }

    /// Runs one program once: (action, output frame).
    pub fn run(&mut self, p: TestProgram, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(p, frame).unwrap()
    }

    pub fn try_run(&mut self, p: TestProgram, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let out = self.0.as_mut().unwrap().run(p, frame, LO, 1)?;
        Ok((out.action, out.data))
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.cleanup();
        }
    }
}

pub fn is_tc(p: TestProgram) -> bool {
    matches!(p, TestProgram::TcExternal | TestProgram::TcInternal)
}
