//! Data-plane throughput: generator namespace → veth → gateway namespace
//! (the device under test, in one of several modes) → veth → sink
//! namespace, which counts in XDP and drops. Modes are interleaved round by
//! round and the median per mode is reported.
//!
//! ```text
//!  gen                     gw                                    sink
//!  g<pid> 198.51.100.2 --- x<pid> 198.51.100.1 | i<pid> 10.0.0.1 --- s<pid> 10.0.0.11
//! ```
//!
//! The frames go to the floating IP 203.0.113.10, which floatip and
//! nftables translate to 10.0.0.11; in `linux-forward` a /32 route sends
//! 203.0.113.10 itself to the sink. Neighbours are static, so no ARP.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use floatip::{
    dataplane::bench::{
        BenchObject, FRAME_LEN, GenSpec, MinNatEntry, XDP_TX, in_netns, pin_thread,
    },
    iface,
};
use floatip_common::{SINK_SAMPLE_SHIFT, SINK_SAMPLE_SLOTS};
use tests::{
    netns::{self, Topology},
    pkt,
};

use super::env::{
    self, check_stop, fmt_mac, in_ns, link_up, median, netns_path, ns_sysfs_write, sh,
};

pub const FLOATING: &str = "203.0.113.10";
pub const FIXED: &str = "10.0.0.11";
/// The generator's own address: the upstream router of the gateway's default route.
const ROUTER_IP: &str = "198.51.100.2";
/// Where the offered traffic comes from: a client behind that router, as a gateway's
/// traffic does (its /16 holds nothing the gateway manages, so the anti-spoofing filter
/// clears it with one array read).
const GEN_IP: &str = "192.0.2.77";
const FIRST_PORT: u16 = 1024;
const DPORT: u16 = 9;

/// The device-under-test configurations, in the order they run in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    FloatipXdp,
    FloatipXdpGeneric,
    FloatipTc,
    /// `dnat`/`snat` rules with conntrack; with `n` > 1 the rule for the
    /// benchmark's floating IP is the last of `n` DNAT and `n` SNAT rules.
    NftablesNat(u32),
    LinuxForward,
    XdpRedirect,
    /// `bench_min_nat`: one lookup, MACs in the entry, redirect.
    MinimalNat,
    SinkOnly,
}

impl Mode {
    pub fn name(self) -> String {
        match self {
            Mode::FloatipXdp => "floatip-xdp".into(),
            Mode::FloatipXdpGeneric => "floatip-xdp-generic".into(),
            Mode::FloatipTc => "floatip-tc".into(),
            Mode::NftablesNat(1) => "nftables-nat".into(),
            Mode::NftablesNat(n) => format!("nftables-nat-{n}-rules"),
            Mode::LinuxForward => "linux-forward".into(),
            Mode::XdpRedirect => "xdp-redirect".into(),
            Mode::MinimalNat => "minimal-nat".into(),
            Mode::SinkOnly => "sink-only".into(),
        }
    }

    /// How a generated frame looks at the sink after this mode: (destination
    /// address, TTL, translated and forwarded by the gateway).
    fn at_sink(self) -> (&'static str, u8, bool) {
        match self {
            Mode::SinkOnly | Mode::XdpRedirect => (FLOATING, 64, false),
            Mode::MinimalNat => (FIXED, 64, true),
            Mode::LinuxForward => (FLOATING, 63, true),
            Mode::FloatipXdp | Mode::FloatipXdpGeneric | Mode::FloatipTc | Mode::NftablesNat(_) => {
                (FIXED, 63, true)
            }
        }
    }

    fn floatip_mode(self) -> Option<&'static str> {
        match self {
            Mode::FloatipXdp => Some("xdp"),
            Mode::FloatipXdpGeneric => Some("xdp-generic"),
            Mode::FloatipTc => Some("tc"),
            _ => None,
        }
    }
}

pub const MODES: [Mode; 8] = [
    Mode::FloatipXdp,
    Mode::FloatipXdpGeneric,
    Mode::FloatipTc,
    Mode::NftablesNat(1),
    Mode::LinuxForward,
    Mode::XdpRedirect,
    Mode::MinimalNat,
    Mode::SinkOnly,
];

/// Where the generator and the gateway run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Generator, gateway and sink all on CPU 0.
    OneCpu,
    /// Generator on CPU 0; the gateway's ingress NAPI (threaded) and the
    /// sink it feeds on CPU 1.
    TwoCpus,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::OneCpu => "one-cpu",
            Placement::TwoCpus => "two-cpus",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneratorKind {
    /// `bench_gen` through BPF_PROG_TEST_RUN with live frames.
    Xdp,
    /// netsniff-ng's trafgen (PF_PACKET TX ring).
    Trafgen,
}

impl GeneratorKind {
    pub fn name(self) -> &'static str {
        match self {
            GeneratorKind::Xdp => "xdp-live-frames",
            GeneratorKind::Trafgen => "trafgen",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Timing {
    pub rounds: usize,
    pub warmup: Duration,
    pub window: Duration,
}

/// One measurement of one mode.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Delivered at the sink over the window.
    pub mpps: f64,
    /// What the generator sent over its whole run (XDP generator only).
    pub offered_mpps: Option<f64>,
    /// The XDP generator's test runs as the kernel timed them, ns per frame
    /// (with one CPU, that includes the gateway and the sink, which run in
    /// the generator's softirq; time the thread was not running is left out).
    pub gen_ns: Option<f64>,
    /// Why there is no figure (trafgen may give up, see `run_placement`).
    pub error: Option<String>,
}

/// Results of one placement: every sample per mode, in round order.
#[derive(Clone, Debug)]
pub struct PlacementResult {
    pub placement: Placement,
    pub samples: Vec<(Mode, Vec<Sample>)>,
}

impl PlacementResult {
    pub fn median(&self, mode: Mode) -> Option<f64> {
        self.median_of(mode, |x| Some(x.mpps))
    }

    /// Median of the generator's kernel-timed ns per frame.
    pub fn median_gen_ns(&self, mode: Mode) -> Option<f64> {
        self.median_of(mode, |x| x.gen_ns)
    }

    fn median_of(&self, mode: Mode, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        self.samples
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, s)| {
                s.iter()
                    .filter_map(&f)
                    .filter(|v| v.is_finite())
                    .collect::<Vec<_>>()
            })
            .filter(|v| !v.is_empty())
            .map(|v| median(&v))
    }

    /// Distinct reasons why samples are missing.
    pub fn errors(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (m, s) in &self.samples {
            for e in s.iter().filter_map(|x| x.error.as_ref()) {
                let line = format!("{}: {e}", m.name());
                if !out.contains(&line) {
                    out.push(line);
                }
            }
        }
        out
    }
}

/// The three namespaces and the sink; removed on drop.
pub struct Rig {
    gen_ns: String,
    gw_ns: String,
    gen_if: String,
    gwx: String,
    gwi: String,
    gen_mac: [u8; 6],
    gwx_mac: [u8; 6],
    gwi_mac: [u8; 6],
    sink_mac: [u8; 6],
    floatip: PathBuf,
    bpffs: PathBuf,
    state: PathBuf,
    workdir: PathBuf,
    flows: u32,
    /// Frames per kernel batch of the XDP generator.
    batch: u32,
    sink: Option<BenchObject>,
    // Last: dropped after the sink program is gone.
    _topo: Topology,
}

impl Rig {
    pub fn build(floatip: &Path, flows: u32, batch: u32) -> Result<Rig> {
        if !(1..=64_512).contains(&flows) {
            bail!("--flows must be between 1 and 64512 (source ports 1024..65535)");
        }
        if !(1..=256).contains(&batch) {
            bail!("--batch must be between 1 and 256");
        }
        let mut topo = Topology::new();
        let workdir = topo.temp_dir("bench")?;
        let bpffs = PathBuf::from("/sys/fs/bpf").join(format!("{}-bench", topo.prefix()));
        let gen_ns = topo.namespace("gen")?;
        let gw_ns = topo.namespace("gw")?;
        let sink_ns = topo.namespace("sink")?;
        {
            let (gw, bpffs, floatip, state) = (
                gw_ns.clone(),
                bpffs.clone(),
                floatip.to_path_buf(),
                workdir.join("state.db"),
            );
            topo.on_drop(move || {
                if bpffs.exists() {
                    let mut c = vec![floatip.to_string_lossy().into_owned()];
                    for a in ["--bpffs", &bpffs.to_string_lossy(), "--state"] {
                        c.push(a.to_string());
                    }
                    c.push(state.to_string_lossy().into_owned());
                    c.push("detach".into());
                    let argv: Vec<&str> = c.iter().map(String::as_str).collect();
                    let _ = netns::exec(&gw, &argv);
                    let _ = fs::remove_dir_all(&bpffs);
                }
            });
        }
        // Interface names carry our pid: the kernel names a threaded NAPI's
        // thread after its device, and that name must be ours alone.
        let pid = std::process::id();
        let (gen_if, gwx, gwi, sink_if) = (
            format!("g{pid}"),
            format!("x{pid}"),
            format!("i{pid}"),
            format!("s{pid}"),
        );
        topo.veth(&gen_ns, &gen_if, &gw_ns, &gwx)?;
        topo.veth(&gw_ns, &gwi, &sink_ns, &sink_if)?;
        // A veth accepts XDP-redirected (and XDP_TX'd) frames only when its
        // peer runs NAPI, which GRO (or an XDP program) provides: GRO on
        // every end, so every mode sees the same receive path. Only after
        // the links are up: the kernel re-evaluates whether the peer may
        // send such frames (NETDEV_XDP_ACT_NDO_XMIT) only when GRO changes
        // on a running device.
        let ends = [
            (&gen_ns, &gen_if),
            (&gw_ns, &gwx),
            (&gw_ns, &gwi),
            (&sink_ns, &sink_if),
        ];
        for (ns, ifname) in ends {
            link_up(ns, ifname)?;
        }
        for (ns, ifname) in ends {
            in_ns(ns, &["ethtool", "-K", ifname, "gro", "on"])?;
        }
        let addr = |ns: &str, ifname: &str, cidr: &str| {
            sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", ifname]).map(drop)
        };
        addr(&gen_ns, &gen_if, &format!("{ROUTER_IP}/24"))?;
        addr(&gw_ns, &gwx, "198.51.100.1/24")?;
        addr(&gw_ns, &gwi, "10.0.0.1/24")?;
        addr(&sink_ns, &sink_if, "10.0.0.11/24")?;
        for key in ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"] {
            in_ns(&gw_ns, &["sysctl", "-qw", key])?;
        }
        for ifname in [&gwx, &gwi] {
            in_ns(
                &gw_ns,
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.conf.{ifname}.rp_filter=0"),
                ],
            )?;
        }
        sh(&[
            "ip", "-n", &gw_ns, "route", "add", "default", "via", ROUTER_IP, "dev", &gwx,
        ])?;
        let gen_mac = env::mac(&gen_ns, &gen_if)?;
        let gwx_mac = env::mac(&gw_ns, &gwx)?;
        let gwi_mac = env::mac(&gw_ns, &gwi)?;
        let sink_mac = env::mac(&sink_ns, &sink_if)?;
        for (ip, dev, mac) in [
            (FIXED, &gwi, sink_mac),
            (FLOATING, &gwi, sink_mac),
            (ROUTER_IP, &gwx, gen_mac),
        ] {
            sh(&[
                "ip",
                "-n",
                &gw_ns,
                "neigh",
                "replace",
                ip,
                "lladdr",
                &fmt_mac(&mac),
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        let sink = in_netns(&netns_path(&sink_ns), || {
            let mut s = BenchObject::load()?;
            s.attach_sink(iface::index(&sink_if)?)?;
            Ok(s)
        })?;
        Ok(Rig {
            gen_ns,
            gw_ns,
            gen_if,
            gwx,
            gwi,
            gen_mac,
            gwx_mac,
            gwi_mac,
            sink_mac,
            floatip: floatip.to_path_buf(),
            state: workdir.join("state.db"),
            bpffs,
            workdir,
            flows,
            batch,
            sink: Some(sink),
            _topo: topo,
        })
    }

    fn floatip(&self, args: &[&str]) -> Result<()> {
        let bin = self.floatip.to_string_lossy();
        let bpffs = self.bpffs.to_string_lossy();
        let state = self.state.to_string_lossy();
        let mut argv: Vec<&str> = vec![&bin, "--bpffs", &bpffs, "--state", &state];
        argv.extend_from_slice(args);
        in_ns(&self.gw_ns, &argv).map(drop)
    }

    /// Waits until the follower has cached the pair's next hop (static
    /// neighbours: at once), so the measurement is of the cached path.
    fn wait_cached(&self) -> Result<()> {
        let (bin, bpffs, state) = (
            self.floatip.to_string_lossy(),
            self.bpffs.to_string_lossy(),
            self.state.to_string_lossy(),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = in_ns(
                &self.gw_ns,
                &[
                    &bin, "--bpffs", &bpffs, "--state", &state, "status", "-f", "json",
                ],
            )?;
            let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
            if v["next_hops"]["cached"].as_u64() == Some(1) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "floatip follow never cached the pair's next hop: {}",
                    v["next_hops"]
                );
            }
            thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn floatip_counter(&self, name: &str) -> Result<u64> {
        let bin = self.floatip.to_string_lossy();
        let bpffs = self.bpffs.to_string_lossy();
        let state = self.state.to_string_lossy();
        let out = in_ns(
            &self.gw_ns,
            &[
                &bin, "--bpffs", &bpffs, "--state", &state, "status", "-f", "json",
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
        v["counters"][name]
            .as_u64()
            .ok_or_else(|| anyhow!("floatip status has no counter {name}"))
    }

    fn gen_spec(&self) -> GenSpec {
        GenSpec {
            dst_mac: self.gwx_mac,
            src_mac: self.gen_mac,
            src_ip: GEN_IP.parse().unwrap(),
            src_count: 1,
            dst_ip: FLOATING.parse().unwrap(),
            dst_count: 1,
            dst_offset: 0,
            sport: FIRST_PORT,
            flows: self.flows,
            dport: DPORT,
            action: XDP_TX,
        }
    }

    /// Checks the frames the sink of `active` kept against what `mode`
    /// makes of a generated frame, byte for byte (built here from scratch,
    /// with the packet tests' builder). Frames that are not the generator's
    /// (the gateway's own IPv6 chatter) are skipped; returns how many were checked.
    fn check_samples(&self, active: &Active) -> Result<usize> {
        let sink = self.sink_of(active)?;
        let (dst, ttl, forwarded) = active.mode.at_sink();
        let (dst_mac, src_mac) = if forwarded {
            (self.sink_mac, self.gwi_mac)
        } else {
            (self.gwx_mac, self.gen_mac)
        };
        let (src, dst): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
            (GEN_IP.parse().unwrap(), dst.parse().unwrap());
        let mut checked = 0;
        for (len, f) in sink.samples()? {
            let ours = f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[26..30] == src.octets();
            if !ours {
                continue;
            }
            let sport = u16::from_be_bytes([f[34], f[35]]);
            let mut ip = pkt::Ip::new(src, dst, 17);
            ip.ttl = ttl;
            ip.id = 0;
            let udp = pkt::udp(src, dst, sport, DPORT, &[0; FRAME_LEN - 42], true);
            let want = pkt::eth(dst_mac, src_mac, None, 0x0800, &ip.packet(&udp));
            let ports = FIRST_PORT..FIRST_PORT + (self.flows - 1) as u16 + 1;
            if len as usize != FRAME_LEN || f != want || !ports.contains(&sport) {
                bail!(
                    "{}: a frame at the sink is not what the generator and this mode make of it\n  got  {}\n  want {}",
                    active.mode.name(),
                    hex(&f),
                    hex(&want)
                );
            }
            checked += 1;
        }
        Ok(checked)
    }

    /// The trafgen configuration of the same traffic as [`Self::gen_config`].
    fn trafgen_config(&self) -> Result<PathBuf> {
        let path = self.workdir.join("trafgen.cfg");
        let last = FIRST_PORT as u32 + self.flows - 1;
        let text = format!(
            "{{\n  eth(da={}, sa={}),\n  ipv4(saddr={GEN_IP}, daddr={FLOATING}, ttl=64, df),\n  udp(sport=dinc({FIRST_PORT}, {last}), dport={DPORT}),\n  fill(0x00, 18)\n}}\n",
            fmt_mac(&self.gwx_mac),
            fmt_mac(&self.gen_mac)
        );
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Sets threaded NAPI on the gateway's ingress veth.
    fn set_threaded(&self, on: bool) -> Result<()> {
        ns_sysfs_write(
            &self.gw_ns,
            &format!("/sys/class/net/{}/threaded", self.gwx),
            if on { "1" } else { "0" },
        )
    }

    /// Pins the NAPI threads of the gateway's ingress veth to `cpu`; their
    /// names are `napi/<ifname>-<napi id>` (cut to 15 bytes).
    fn pin_napi_threads(&self, cpu: usize) -> Result<usize> {
        let prefix = format!("napi/{}-", self.gwx);
        let mut n = 0;
        for entry in fs::read_dir("/proc")? {
            let entry = entry?;
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
                continue;
            };
            let Ok(comm) = fs::read_to_string(entry.path().join("comm")) else {
                continue;
            };
            if !comm.trim_end().starts_with(&prefix) {
                continue;
            }
            // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            unsafe { libc::CPU_SET(cpu, &mut set) };
            if unsafe { libc::sched_setaffinity(pid, std::mem::size_of_val(&set), &set) } != 0 {
                bail!(
                    "cannot pin {} ({pid}) to CPU {cpu}: {}",
                    comm.trim_end(),
                    std::io::Error::last_os_error()
                );
            }
            n += 1;
        }
        Ok(n)
    }

    /// Puts the gateway in `mode`; the returned guard undoes it.
    fn setup(&self, mode: Mode) -> Result<Active> {
        let mut active = Active {
            mode,
            object: None,
            follower: None,
        };
        if let Some(m) = mode.floatip_mode() {
            self.floatip(&[
                "attach",
                "--external",
                &self.gwx,
                "--internal",
                &self.gwi,
                "--mode",
                m,
            ])?;
            self.floatip(&["nat", "add", FLOATING, FIXED])?;
            let (bin, bpffs, state) = (
                self.floatip.to_string_lossy(),
                self.bpffs.to_string_lossy(),
                self.state.to_string_lossy(),
            );
            active.follower = Some(netns::spawn(
                &self.gw_ns,
                &[&bin, "--bpffs", &bpffs, "--state", &state, "follow"],
            )?);
            self.wait_cached()?;
            return Ok(active);
        }
        match mode {
            Mode::NftablesNat(n) => {
                let path = self.workdir.join(format!("nat-{n}.nft"));
                fs::write(&path, nft_ruleset(n))?;
                in_ns(&self.gw_ns, &["nft", "-f", &path.to_string_lossy()])?;
            }
            Mode::LinuxForward => {
                sh(&[
                    "ip",
                    "-n",
                    &self.gw_ns,
                    "route",
                    "add",
                    &format!("{FLOATING}/32"),
                    "dev",
                    &self.gwi,
                ])?;
            }
            Mode::XdpRedirect => {
                let (gwx, gwi) = (&self.gwx, &self.gwi);
                active.object = Some(in_netns(&netns_path(&self.gw_ns), || {
                    let mut o = BenchObject::load()?;
                    o.attach_redirect(iface::index(gwx)?, iface::index(gwi)?)?;
                    Ok(o)
                })?);
            }
            Mode::MinimalNat => {
                let (gwx, gwi) = (&self.gwx, &self.gwi);
                let entry = MinNatEntry {
                    dst_mac: self.sink_mac,
                    src_mac: self.gwi_mac,
                    addr: u32::from_ne_bytes(FIXED.parse::<std::net::Ipv4Addr>()?.octets()),
                    ifindex: 0,
                };
                active.object = Some(in_netns(&netns_path(&self.gw_ns), || {
                    let mut o = BenchObject::load()?;
                    let entry = MinNatEntry {
                        ifindex: iface::index(gwi)?,
                        ..entry
                    };
                    o.attach_min_nat(iface::index(gwx)?, &[(FLOATING.parse()?, entry)])?;
                    Ok(o)
                })?);
            }
            Mode::SinkOnly => {
                let gwx = &self.gwx;
                active.object = Some(in_netns(&netns_path(&self.gw_ns), || {
                    let mut o = BenchObject::load()?;
                    o.attach_sink(iface::index(gwx)?)?;
                    Ok(o)
                })?);
            }
            _ => unreachable!("floatip modes are handled above"),
        }
        Ok(active)
    }

    fn teardown(&self, mode: Mode) -> Result<()> {
        if mode.floatip_mode().is_some() {
            return self.floatip(&["detach"]);
        }
        match mode {
            Mode::NftablesNat(_) => {
                in_ns(&self.gw_ns, &["nft", "delete", "table", "ip", "fbench"])?;
                // The next round starts from an empty connection table too.
                in_ns(&self.gw_ns, &["conntrack", "-F"])
                    .map(drop)
                    .or_else(|e| {
                        // conntrack -F exits 1 when the table is already empty on some versions.
                        if e.to_string().contains("0 flow entries") {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
            }
            Mode::LinuxForward => sh(&[
                "ip",
                "-n",
                &self.gw_ns,
                "route",
                "del",
                &format!("{FLOATING}/32"),
                "dev",
                &self.gwi,
            ])
            .map(drop),
            _ => Ok(()),
        }
    }

    /// The sink of `mode`.
    fn sink_of<'a>(&'a self, active: &'a Active) -> Result<&'a BenchObject> {
        match &active.object {
            Some(o) if active.mode == Mode::SinkOnly => Ok(o),
            _ => self.sink.as_ref().ok_or_else(|| anyhow!("no sink")),
        }
    }

    /// The counter the sink of `mode` keeps.
    fn delivered(&self, active: &Active) -> Result<u64> {
        self.sink_of(active)?.sink_count()
    }

    /// Measures `mode` once: start the generator, wait out the warm-up,
    /// count delivered frames over the window, stop the generator.
    pub fn measure(
        &mut self,
        mode: Mode,
        placement: Placement,
        generator: GeneratorKind,
        timing: &Timing,
    ) -> Result<Sample> {
        check_stop()?;
        let active = self.setup(mode)?;
        let sample = self.measure_active(&active, placement, generator, timing);
        drop(active);
        let teardown = self.teardown(mode);
        let sample = sample?;
        teardown?;
        Ok(sample)
    }

    fn measure_active(
        &mut self,
        active: &Active,
        placement: Placement,
        generator: GeneratorKind,
        timing: &Timing,
    ) -> Result<Sample> {
        if placement == Placement::TwoCpus && self.pin_napi_threads(1)? == 0 {
            bail!("no threaded NAPI thread of {} to pin", self.gwx);
        }
        if active.mode != Mode::SinkOnly {
            self.sink
                .as_mut()
                .ok_or_else(|| anyhow!("no sink"))?
                .clear_samples()?;
        }
        let translated_before = match active.mode.floatip_mode() {
            Some(_) => Some(self.floatip_counter("translated")?),
            None => None,
        };
        let delivered_before = self.delivered(active)?;
        let mut source = match generator {
            GeneratorKind::Xdp => Generator::start_xdp(self)?,
            GeneratorKind::Trafgen => Generator::start_trafgen(self)?,
        };
        let result: Result<f64> = (|| {
            env::sleep(timing.warmup)?;
            source.check()?;
            let (c0, t0) = (self.delivered(active)?, Instant::now());
            env::sleep(timing.window)?;
            let (c1, t1) = (self.delivered(active)?, Instant::now());
            source.check()?;
            Ok(((c1 - c0) as f64 / (t1 - t0).as_secs_f64()) / 1e6)
        })();
        let (offered, gen_ns) = source.stop()?;
        let mpps = result?;
        let delivered = self.delivered(active)? - delivered_before;
        if let Some(before) = translated_before {
            // The sink counts whatever arrives: make sure floatip really
            // translated all of it rather than the kernel forwarding some
            // (read last, so it can only have grown since the sink's count).
            let translated = self.floatip_counter("translated")? - before;
            if delivered > translated + translated / 1000 + 100 {
                bail!(
                    "{}: the sink counted {delivered} frames but floatip translated only {translated}",
                    active.mode.name()
                );
            }
        }
        let checked = self.check_samples(active)?;
        let kept = u64::from(SINK_SAMPLE_SLOTS) << SINK_SAMPLE_SHIFT;
        if delivered >= kept && checked == 0 {
            bail!(
                "{}: the sink counted {delivered} frames but kept none of the generator's",
                active.mode.name()
            );
        }
        Ok(Sample {
            mpps,
            offered_mpps: offered,
            gen_ns,
            error: None,
        })
    }

    /// Runs the whole matrix of `modes` × `rounds` for one placement.
    pub fn run_placement(
        &mut self,
        placement: Placement,
        modes: &[Mode],
        generator: GeneratorKind,
        timing: &Timing,
    ) -> Result<PlacementResult> {
        self.set_threaded(placement == Placement::TwoCpus)?;
        let mut samples: Vec<(Mode, Vec<Sample>)> =
            modes.iter().map(|m| (*m, Vec::new())).collect();
        for round in 0..timing.rounds {
            for (mode, list) in samples.iter_mut() {
                let s = match self.measure(*mode, placement, generator, timing) {
                    Ok(s) => s,
                    // trafgen gives up when the veth's ring is full (EAGAIN
                    // on its TX ring): report that instead of a figure.
                    Err(e) if generator == GeneratorKind::Trafgen && check_stop().is_ok() => {
                        eprintln!("  {} {}: no figure: {e:#}", placement.name(), mode.name());
                        Sample {
                            mpps: f64::NAN,
                            offered_mpps: None,
                            gen_ns: None,
                            error: Some(format!("{e:#}")),
                        }
                    }
                    Err(e) => {
                        return Err(e.context(format!(
                            "{} ({}, round {})",
                            mode.name(),
                            placement.name(),
                            round + 1
                        )));
                    }
                };
                eprintln!(
                    "  {:<8} round {}/{}  {:<28} {:>7.3} Mpps{}{}",
                    placement.name(),
                    round + 1,
                    timing.rounds,
                    mode.name(),
                    s.mpps,
                    s.offered_mpps
                        .map(|o| format!("  (offered {o:.3})"))
                        .unwrap_or_default(),
                    s.gen_ns
                        .map(|n| format!("  generator {n:.0} ns/frame"))
                        .unwrap_or_default()
                );
                list.push(s);
            }
        }
        self.set_threaded(false)?;
        Ok(PlacementResult { placement, samples })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Detach the sink before the namespaces go.
        self.sink.take();
    }
}

/// A mode in place; holds the benchmark object of the XDP-only modes.
struct Active {
    mode: Mode,
    object: Option<BenchObject>,
    /// `floatip follow` for the floatip modes: the next-hop cache in use,
    /// as on a gateway running the agent. Stopped (and the cache
    /// withdrawn) on drop, before the teardown's detach.
    follower: Option<netns::Spawned>,
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(mut f) = self.follower.take() {
            f.signal(libc::SIGTERM);
            let _ = f.finish(std::time::Duration::from_secs(10));
        }
    }
}

/// nftables NAT the way the Neutron L3 agent does floating IPs: one DNAT
/// and one SNAT rule per floating IP, conntrack doing the rest. With `n`
/// above 1, `n - 1` other floating IPs come first (from 198.18.0.0/15, the
/// benchmarking range; never on a wire).
pub fn nft_ruleset(n: u32) -> String {
    let mut dnat = String::new();
    let mut snat = String::new();
    for i in 1..n {
        let f = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + i);
        let x = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 1, 0, 0)) + i);
        dnat.push_str(&format!("    ip daddr {f} dnat to {x}\n"));
        snat.push_str(&format!("    ip saddr {x} snat to {f}\n"));
    }
    format!(
        "table ip fbench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{dnat}    ip daddr {FLOATING} dnat to {FIXED}\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{snat}    ip saddr {FIXED} snat to {FLOATING}\n  }}\n}}\n"
    )
}

/// A running traffic generator.
enum Generator {
    Xdp {
        stop: Arc<AtomicBool>,
        sent: Arc<AtomicU64>,
        /// Kernel-timed ns of all test runs so far.
        busy_ns: Arc<AtomicU64>,
        started: Instant,
        thread: Option<JoinHandle<Result<()>>>,
    },
    Trafgen {
        child: Option<Child>,
        log: PathBuf,
    },
}

/// Frames per BPF_PROG_TEST_RUN call: a few tens of ms at the rates seen
/// here, so a stop request is honoured quickly.
const GEN_CHUNK: u32 = 1 << 18;

impl Generator {
    fn start_xdp(rig: &Rig) -> Result<Generator> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (ns, ifname, spec, batch) = (
            netns_path(&rig.gen_ns),
            rig.gen_if.clone(),
            rig.gen_spec(),
            rig.batch,
        );
        let busy_ns = Arc::new(AtomicU64::new(0));
        let (stop2, sent2, busy2) = (stop.clone(), sent.clone(), busy_ns.clone());
        let thread = thread::spawn(move || {
            in_netns(&ns, || {
                pin_thread(0)?;
                let mut g = BenchObject::load()?;
                g.set_gen(&spec, false)?;
                let idx = iface::index(&ifname)?;
                while !stop2.load(Ordering::Relaxed) {
                    let per_frame = g.gen_run(idx, GEN_CHUNK, batch)?;
                    sent2.fetch_add(GEN_CHUNK as u64, Ordering::Relaxed);
                    busy2.fetch_add(
                        per_frame.as_nanos() as u64 * u64::from(GEN_CHUNK),
                        Ordering::Relaxed,
                    );
                }
                Ok(())
            })
        });
        Ok(Generator::Xdp {
            stop,
            sent,
            busy_ns,
            started: Instant::now(),
            thread: Some(thread),
        })
    }

    fn start_trafgen(rig: &Rig) -> Result<Generator> {
        let cfg = rig.trafgen_config()?;
        let cfg = cfg.to_string_lossy();
        let log = rig.workdir.join("trafgen.log");
        // One worker on CPU 0 (-P 1 pins it there); -Q: a veth has no IRQ to
        // touch; -C: no CPU statistics at exit.
        let mut cmd = netns::ns_command(
            &rig.gen_ns,
            &[
                "taskset",
                "-c",
                "0",
                "trafgen",
                "--dev",
                &rig.gen_if,
                "--conf",
                &cfg,
                "-P",
                "1",
                "-Q",
                "-C",
                "-q",
            ],
        );
        // trafgen forks a worker and signals its process group when it
        // stops: its own group keeps that away from us, and lets us stop
        // the worker with it.
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        let child = cmd.spawn().context("cannot start trafgen")?;
        Ok(Generator::Trafgen {
            child: Some(child),
            log,
        })
    }

    /// Fails if the generator died.
    fn check(&mut self) -> Result<()> {
        match self {
            Generator::Xdp { thread, .. } => {
                if thread.as_ref().is_some_and(|t| t.is_finished()) {
                    let t = thread.take().unwrap();
                    return match t.join() {
                        Ok(Ok(())) => Err(anyhow!("the generator stopped early")),
                        Ok(Err(e)) => Err(e.context("generator")),
                        Err(_) => Err(anyhow!("the generator panicked")),
                    };
                }
                Ok(())
            }
            Generator::Trafgen { child, log } => {
                let exited = match child.as_mut() {
                    Some(c) => c.try_wait()?.is_some(),
                    None => true,
                };
                if exited {
                    let text = fs::read_to_string(log).unwrap_or_default();
                    bail!("trafgen exited: {}", text.trim());
                }
                Ok(())
            }
        }
    }

    /// Stops the generator; returns the offered rate and the kernel-timed
    /// ns per frame when known.
    fn stop(&mut self) -> Result<(Option<f64>, Option<f64>)> {
        match self {
            Generator::Xdp {
                stop,
                sent,
                busy_ns,
                started,
                thread,
            } => {
                stop.store(true, Ordering::Relaxed);
                if let Some(t) = thread.take() {
                    t.join().map_err(|_| anyhow!("the generator panicked"))??;
                }
                let secs = started.elapsed().as_secs_f64();
                let frames = sent.load(Ordering::Relaxed) as f64;
                let ns = busy_ns.load(Ordering::Relaxed) as f64;
                Ok((
                    Some(frames / secs / 1e6),
                    (frames > 0.0).then(|| ns / frames),
                ))
            }
            Generator::Trafgen { child, .. } => {
                if let Some(mut c) = child.take() {
                    let pgid = c.id() as libc::pid_t;
                    // SAFETY: the group of our un-reaped child: its id cannot be reused.
                    unsafe { libc::kill(-pgid, libc::SIGINT) };
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while c.try_wait()?.is_none() && Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(20));
                    }
                    // The worker too, whether or not the parent went. A group id
                    // is not handed out again while a member lives; with none
                    // left this fails with ESRCH.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    let _ = c.wait();
                }
                Ok((None, None))
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Drop for Generator {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
