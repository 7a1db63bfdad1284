//! The programs loaded for `BPF_PROG_TEST_RUN` with a small association
//! table and one pool, their pins removed on drop (also when a test fails).

use std::{
    io::Write as _,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::{
        Barrier, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

use aya::{
    TestRunOptions,
    maps::ProgramArray,
    programs::{SchedClassifier, TestRun},
};
use floatip::dataplane::{
    BENCH_OBJECT, Counters, Role, TestProgram, TestPrograms, bench::pin_thread,
};
use floatip_common::{POOL_ANY_NIC, programs};

use crate::pkt::MAC_A;

pub const FIP1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const FIP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const FIXED1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
pub const FIXED2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
pub const UNASSOC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The gateway's own address on the tenant network (local in the fixture's FIB).
pub const GW_INT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Behind a 1280-byte MTU in the fixture's FIB.
pub const NARROW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
pub const NARROW_MTU: usize = 1280;
/// Behind an unreachable route in the fixture's FIB.
pub const UNREACHABLE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
/// Instances behind the narrow MTU and behind an unreachable route (outside
/// the differential test's tenant addresses).
pub const NARROW_FIXED: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 13);
pub const UNREACHABLE_FIXED: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 14);
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
pub const ALL: [TestProgram; 5] = [
    TestProgram::XdpExternal,
    TestProgram::XdpInternal,
    TestProgram::TcExternal,
    TestProgram::TcInternal,
    TestProgram::TcEgress,
];

/// Size of the fixture's association maps.
const MAX_ASSOCIATIONS: u32 = 1024;

/// The fixture's one managed NIC.
const NICS: [(u32, [u8; 6], Role); 1] = [(LO, MAC_A, Role::External)];

/// The loaded programs, their bpffs directory and association map size.
pub struct Fixture(Option<TestPrograms>, String, u32);

impl Fixture {
    /// Two associations (FIP1→FIXED1, FIP2→FIXED2) and the pool
    /// 203.0.113.0/24 with the router's address excluded.
    pub fn new() -> Self {
        Self::with(&[(FIP1, FIXED1), (FIP2, FIXED2)])
    }

    pub fn with(pairs: &[(Ipv4Addr, Ipv4Addr)]) -> Self {
        Self::with_counters(pairs, None)
    }

    /// [`Self::with`] with the association counters where `counters` says
    /// (`None`: the loader's choice, per-CPU for this small table).
    pub fn with_counters(pairs: &[(Ipv4Addr, Ipv4Addr)], counters: Option<Counters>) -> Self {
        private_netns();
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = format!(
            "/sys/fs/bpf/floatip-t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let progs =
            TestPrograms::load_with_counters(dir.as_ref(), MAX_ASSOCIATIONS, &NICS, counters)
                .expect("load programs");
        let fx = Fixture(Some(progs), dir, MAX_ASSOCIATIONS);
        let mut dp = fx.progs().dataplane().unwrap();
        for (f, x) in pairs {
            dp.nat_add(*f, *x).unwrap();
        }
        dp.pool_prefix_add(Ipv4Addr::new(203, 0, 113, 0), 24, false, POOL_ANY_NIC)
            .unwrap();
        dp.pool_prefix_add(ROUTER, 32, true, POOL_ANY_NIC).unwrap();
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

    /// Runs `p` over `frame` `repeat` times (one `BPF_PROG_TEST_RUN`) on each
    /// of `cpus` at once, each CPU's thread with its own load of the programs
    /// on this fixture's maps, so that their counters see every CPU at once.
    /// Returns each run's action.
    pub fn run_on_cpus(
        &self,
        p: TestProgram,
        frame: &[u8],
        repeat: u32,
        cpus: &[usize],
    ) -> Vec<u32> {
        let start = Barrier::new(cpus.len());
        let (dir, start) = (&self.1, &start);
        std::thread::scope(|s| {
            let runs: Vec<_> = cpus
                .iter()
                .map(|cpu| {
                    s.spawn(move || {
                        private_netns();
                        pin_thread(*cpu).unwrap();
                        let mut twin =
                            TestPrograms::load_with_counters(dir.as_ref(), self.2, &NICS, None)
                                .expect("load programs again");
                        // Loaded (which takes long) before either runs: the runs overlap.
                        start.wait();
                        twin.run(p, frame, LO, repeat).unwrap().action
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        })
    }
}

/// Moves this thread into the test process's private network namespace,
/// where `BPF_PROG_TEST_RUN` runs and the programs' FIB lookups have
/// defined answers whatever the host's routes: forwarding on, a NIC (one end
/// of a veth pair) holding the gateway's addresses GW_INT/24 and ROUTER/32
/// and the default route; NARROW and NARROW_FIXED behind a smaller MTU
/// (locked, so forwarding uses it), UNREACHABLE and UNREACHABLE_FIXED behind
/// an unreachable route. Those addresses (and loopback, and the tenant
/// subnet's broadcast) are local ("not forwarded"); every other destination
/// has a route but no neighbour entry, so a translated packet comes back as
/// "to the kernel" with its TTL untouched. Made once by a helper thread and
/// kept by a file descriptor: it goes away with the process.
fn private_netns() {
    static NETNS: OnceLock<std::fs::File> = OnceLock::new();
    let ns = NETNS.get_or_init(|| std::thread::spawn(make_netns).join().unwrap());
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!(
            "cannot enter the private network namespace: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Unshares this (helper) thread's network namespace, sets it up (child
/// processes inherit the calling thread's namespace, so `ip` configures
/// this one) and returns a handle on it.
fn make_netns() -> std::fs::File {
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        panic!(
            "cannot make a private network namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    let script = format!(
        "link set lo up\n\
         link add fixture0 type veth peer name fixture1\n\
         link set fixture0 up\n\
         link set fixture1 up\n\
         addr add {GW_INT}/24 dev fixture0\n\
         addr add {ROUTER}/32 dev fixture0\n\
         route add default dev fixture0\n\
         route add {NARROW}/32 dev fixture0 mtu lock {NARROW_MTU}\n\
         route add {NARROW_FIXED}/32 dev fixture0 mtu lock {NARROW_MTU}\n\
         route add unreachable {UNREACHABLE}/32\n\
         route add unreachable {UNREACHABLE_FIXED}/32\n"
    );
    let mut ip = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run ip");
    ip.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(ip.wait().unwrap().success(), "ip -batch failed");
    // /proc/sys/net is the opening thread's namespace.
    std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").expect("enable forwarding");
    std::fs::File::open("/proc/thread-self/ns/net").expect("open the namespace")
}

/// The bench object's program array `test_tc_vlan` tail-calls through.
const TEST_TC_JUMP: &str = "TEST_TC_JUMP";

impl Fixture {
    /// Runs the external (or internal) TC program on `frame` as TC ingress
    /// sees a frame that arrived with an outer 802.1Q tag (VID 100): the
    /// kernel moves that tag into the skb's metadata before the hook, so it
    /// is not in the frame. `BPF_PROG_TEST_RUN` cannot set that metadata, so
    /// the bench object's `test_tc_vlan` pushes the tag (`bpf_skb_vlan_push`)
    /// and tail-calls a second instance of the program, which shares this
    /// fixture's pinned maps. Returns (action, output frame; the metadata
    /// tag is not part of it).
    pub fn run_tc_tagged(&mut self, external: bool, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut dp = self.second_instance();
        let under_test = tc_program(&mut dp, external);
        let mut bench = aya::Ebpf::load(BENCH_OBJECT).expect("load the bench object");
        let mut jump = ProgramArray::try_from(bench.take_map(TEST_TC_JUMP).unwrap()).unwrap();
        jump.set(0, under_test.fd().unwrap(), 0).unwrap();
        let wrapper = tc_program_named(&mut bench, programs::TEST_TC_VLAN);
        test_run(wrapper, frame, None)
    }

    /// Runs the external (or internal) TC program on `frame` as an skb that
    /// GRO merged from segments of `gso_size` bytes (`BPF_PROG_TEST_RUN` sets
    /// the skb's GSO fields from the `__sk_buff` passed in).
    pub fn run_tc_gso(&mut self, external: bool, frame: &[u8], gso_size: u32) -> (u32, Vec<u8>) {
        let mut dp = self.second_instance();
        let prog = tc_program(&mut dp, external);
        // struct __sk_buff (192 bytes): gso_segs at 164, gso_size at 176.
        let mut ctx = [0u8; 192];
        let segs = (frame.len() as u32).div_ceil(gso_size);
        ctx[164..168].copy_from_slice(&segs.to_ne_bytes());
        ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
        test_run(prog, frame, Some(&ctx))
    }

    /// A second instance of the data-plane object, sharing this fixture's
    /// pinned maps (and counting where they keep the counters).
    fn second_instance(&self) -> aya::Ebpf {
        self.progs()
            .second_instance(self.2)
            .expect("load the data-plane object")
    }
}

/// The side's TC program of `dp`, loaded.
fn tc_program(dp: &mut aya::Ebpf, external: bool) -> &mut SchedClassifier {
    let name = if external {
        programs::TC_EXTERNAL
    } else {
        programs::TC_INTERNAL
    };
    tc_program_named(dp, name)
}

fn tc_program_named<'a>(obj: &'a mut aya::Ebpf, name: &str) -> &'a mut SchedClassifier {
    let prog: &mut SchedClassifier = obj.program_mut(name).unwrap().try_into().unwrap();
    prog.load().unwrap();
    prog
}

/// One `BPF_PROG_TEST_RUN` of `prog`: (action, output frame).
fn test_run(prog: &SchedClassifier, frame: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = ctx;
    let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
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
    matches!(
        p,
        TestProgram::TcExternal | TestProgram::TcInternal | TestProgram::TcEgress
    )
}
