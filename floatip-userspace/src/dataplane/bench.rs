//! The aya side of the benchmarks and of the traffic generator: the
//! benchmark-only programs of `floatip-ebpf/src/bin/bench.rs` (sink,
//! redirect-only forwarder, minimal NAT, generator), a rig that measures the
//! cost per packet of the data-plane programs with `BPF_PROG_TEST_RUN`, and
//! the facts the memory figures are computed from.
//!
//! Interface indexes are resolved in the calling thread's network
//! namespace, by the kernel too (the ingress ifindex of a test run, the
//! target of an XDP attachment): call these from [`in_netns`] when the
//! interfaces live in another namespace.

use std::{
    fs,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, TestRunOptions,
    maps::{
        Array, DevMap, HashMap, MapData, MapInfo, MapType, PerCpuArray, PerCpuValues, ProgramArray,
        xdp::DevMapHash,
    },
    programs::{TestRun, Xdp, xdp::XdpMode},
};
use floatip_common::{
    FrameSample, GenState, IfaceSlot, SINK_SAMPLE_SLOTS, maps as names, outcome, programs,
};

use super::{
    BENCH_OBJECT, Counters, Dataplane, Role,
    attach::load,
    pins::{ensure_bpffs, links_dir, maps_dir, remove_pins},
    xdp_ctx,
};

/// The wrapper that writes a fresh frame and tail-calls the program under test.
pub const BENCH_COST: &str = "bench_cost";
const GEN_CONFIG: &str = "GEN_CONFIG";
const BENCH_COUNT: &str = "BENCH_COUNT";
const BENCH_TX: &str = "BENCH_TX";
const BENCH_JUMP: &str = "BENCH_JUMP";
const BENCH_KEYS: &str = "BENCH_KEYS";
const GEN_STATE: &str = "GEN_STATE";
const GEN_ZIPF: &str = "GEN_ZIPF";
const SINK_SAMPLES: &str = "SINK_SAMPLES";
const MIN_NAT: &str = "MIN_NAT";
const MIN_NAT_TX: &str = "MIN_NAT_TX";

/// Length of the frames `bench_gen` and `bench_cost` write (64 bytes on a
/// wire, with the FCS).
pub const FRAME_LEN: usize = 60;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub use floatip_common::{GenConfig, MinNatEntry};

/// The frames a generator or cost run sends: 64-byte UDP/IPv4 (TTL 64, DF,
/// IP id 0, 18 zero bytes of payload), spread as [`GenConfig`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenSpec {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub src_count: u32,
    pub dst_ip: Ipv4Addr,
    pub dst_count: u32,
    pub dst_offset: u32,
    pub sport: u16,
    pub flows: u32,
    pub dport: u16,
    /// What `bench_gen` returns (XDP_TX to send).
    pub action: u32,
}

impl GenSpec {
    /// The frame from `src:sport` to `dst`, every checksum computed over
    /// the whole header and datagram.
    pub fn frame(&self, src: Ipv4Addr, dst: Ipv4Addr, sport: u16) -> [u8; FRAME_LEN] {
        const IP_LEN: u16 = (FRAME_LEN - 14) as u16;
        const UDP_LEN: u16 = IP_LEN - 20;
        let mut f = [0u8; FRAME_LEN];
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&IP_LEN.to_be_bytes());
        f[20..22].copy_from_slice(&0x4000u16.to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&src.octets());
        f[30..34].copy_from_slice(&dst.octets());
        let ip = !fold(words(&f[14..34]));
        f[24..26].copy_from_slice(&ip.to_be_bytes());
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&self.dport.to_be_bytes());
        f[38..40].copy_from_slice(&UDP_LEN.to_be_bytes());
        let pseudo = words(&f[26..34]) + 17 + u32::from(UDP_LEN);
        let udp = match !fold(pseudo + words(&f[34..])) {
            0 => 0xffff,
            c => c,
        };
        f[40..42].copy_from_slice(&udp.to_be_bytes());
        f
    }

    /// Frame `n` of the sequence with pair index `p` (`n` without a table).
    pub fn nth(&self, n: u64, p: u32) -> [u8; FRAME_LEN] {
        let s = if self.src_count > 1 {
            p % self.src_count
        } else {
            0
        };
        let d = (if self.dst_count > 1 {
            p % self.dst_count
        } else {
            0
        } + self.dst_offset)
            % self.dst_count.max(1);
        let port = self
            .sport
            .wrapping_add((n % u64::from(self.flows.max(1))) as u16);
        self.frame(
            Ipv4Addr::from(u32::from(self.src_ip).wrapping_add(s)),
            Ipv4Addr::from(u32::from(self.dst_ip).wrapping_add(d)),
            port,
        )
    }

    /// The test run's input: frame 0. The programs write the rest.
    pub fn template(&self) -> [u8; FRAME_LEN] {
        self.nth(0, 0)
    }

    /// What the programs need to turn the template into frame `n`;
    /// `zipf_mask` as in [`GenConfig`].
    pub fn config(&self, zipf_mask: u32) -> Result<GenConfig> {
        if self.src_count == 0 || self.dst_count == 0 || self.flows == 0 {
            bail!("address counts and flows must be at least 1");
        }
        if self.dst_offset >= self.dst_count {
            bail!("the destination offset must be below the destination count");
        }
        let t = self.template();
        let word = |i: usize| u32::from(u16::from_be_bytes([t[i], t[i + 1]]));
        // What the checksums cover minus what the programs write.
        let ip_sum = words(&t[14..34]) - word(24) - words(&t[26..34]);
        let udp_sum = 17 + words(&t[38..40]) + words(&t[34..]) - word(34) - word(40);
        Ok(GenConfig {
            eth_lo: u64::from_ne_bytes(t[0..8].try_into().unwrap()),
            eth_hi: u32::from_ne_bytes(t[8..12].try_into().unwrap()),
            ttl_proto: u16::from_ne_bytes([t[22], t[23]]),
            sport: self.sport,
            src_ip: u32::from(self.src_ip),
            dst_ip: u32::from(self.dst_ip),
            src_count: self.src_count,
            dst_count: self.dst_count,
            dst_offset: self.dst_offset,
            flows: self.flows,
            ip_sum,
            udp_sum,
            zipf_mask,
            action: self.action,
        })
    }
}

/// Sum of the big-endian 16-bit words of `b` (an even length), unfolded.
fn words(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// How one map's memory grows: what the kernel's own accounting
/// (`map_mem_usage`, the `memlock` of its fdinfo) is computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFacts {
    pub name: String,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// The kernel's figure for the map as it is now, on this machine.
    pub memlock: u64,
}

/// Map types as far as their memory is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash,
    PerCpuHash,
    LruHash,
    LruPerCpuHash,
    Array,
    PerCpuArray,
    LpmTrie,
    DevMap,
    DevMapHash,
    Other(String),
}

impl MapKind {
    fn of(t: MapType) -> Self {
        match t {
            MapType::Hash => MapKind::Hash,
            MapType::PerCpuHash => MapKind::PerCpuHash,
            MapType::LruHash => MapKind::LruHash,
            MapType::LruPerCpuHash => MapKind::LruPerCpuHash,
            MapType::Array => MapKind::Array,
            MapType::PerCpuArray => MapKind::PerCpuArray,
            MapType::LpmTrie => MapKind::LpmTrie,
            MapType::DevMap => MapKind::DevMap,
            MapType::DevMapHash => MapKind::DevMapHash,
            other => MapKind::Other(format!("{other:?}")),
        }
    }
}

/// The `memlock` line of a map fd's fdinfo.
fn memlock(data: &MapData, name: &str) -> Result<u64> {
    let fd = data.fd().as_fd().as_raw_fd();
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no memlock in the fdinfo of {name}"))
}

/// Type, sizes, flags and kernel memory of every data-plane map pinned under `bpffs`.
fn facts_of(bpffs: &Path) -> Result<Vec<MapFacts>> {
    let mut out = Vec::new();
    for name in names::ALL {
        let path = maps_dir(bpffs).join(name);
        let data = MapData::from_pin(&path)?;
        let info = MapInfo::from_pin(&path)?;
        out.push(MapFacts {
            name: name.to_string(),
            kind: MapKind::of(info.map_type()?),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
            memlock: memlock(&data, name)?,
        });
    }
    Ok(out)
}

/// The facts of the data-plane maps as `floatip attach --max-associations
/// N` creates them with the counters where `counters` says, all empty:
/// created with their pins under `bpffs` (which must not exist), read, and
/// removed again.
pub fn map_facts_for(
    bpffs: &Path,
    max_associations: u32,
    counters: Counters,
) -> Result<Vec<MapFacts>> {
    if bpffs.exists() {
        bail!("{} already exists", bpffs.display());
    }
    ensure_bpffs(bpffs)?;
    let facts = load(bpffs, max_associations, Some(counters)).and_then(|ebpf| {
        let facts = facts_of(bpffs);
        drop(ebpf);
        facts
    });
    remove_pins(bpffs);
    facts
}

pub use super::possible_cpus;

/// Runs `f` on a new thread that has joined the network namespace at
/// `netns` (e.g. `/run/netns/NAME`); the caller's thread is never moved.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = fs::File::open(netns).with_context(|| format!("cannot open {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a descriptor we own; it only moves this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "cannot enter {}: {}",
                    netns.display(),
                    std::io::Error::last_os_error()
                );
            }
            f()
        })
        .join()
        .map_err(|_| anyhow!("the thread in {} panicked", netns.display()))?
    })
}

/// Pins the calling thread to one CPU.
pub fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        bail!(
            "cannot pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn xdp_prog<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("object lacks program {name}"))?
        .try_into()?)
}

/// One loaded instance of the benchmark object. Its attachments last as
/// long as the instance (dropping it detaches them).
pub struct BenchObject {
    ebpf: Ebpf,
    /// The test run's input for `bench_gen`, set with the config.
    template: [u8; FRAME_LEN],
    zipf_len: u32,
}

impl BenchObject {
    pub fn load() -> Result<Self> {
        Self::load_sized(0, 0)
    }

    /// With a table of `zipf_len` popularity draws (a power of two, or 0
    /// for none) and room for `min_nat` entries of the minimal NAT.
    pub fn load_sized(zipf_len: u32, min_nat: u32) -> Result<Self> {
        if zipf_len != 0 && !zipf_len.is_power_of_two() {
            bail!("the popularity table's length must be a power of two");
        }
        // The staircase's per-pair counters: a power of two, one slot per pair, per CPU.
        let slots = min_nat.max(1).next_power_of_two();
        let mask = slots - 1;
        let ebpf = EbpfLoader::new()
            .map_max_entries(GEN_ZIPF, zipf_len.max(1))
            .map_max_entries(MIN_NAT, min_nat.max(1024))
            .map_max_entries("BENCH_PAIR_STATS", slots * possible_cpus()? as u32)
            .override_global("PAIR_SLOT_MASK", &mask, true)
            .load(BENCH_OBJECT)
            .context("cannot load the bench object")?;
        Ok(Self {
            ebpf,
            template: [0; FRAME_LEN],
            zipf_len,
        })
    }

    /// Fills the table of pair indices that frames draw their pairs from
    /// when the generator runs with `zipf`; its length must be the one
    /// the object was loaded with.
    pub fn set_zipf(&mut self, table: &[u32]) -> Result<()> {
        if table.len() != self.zipf_len as usize {
            bail!(
                "the popularity table has {} entries, the object room for {}",
                table.len(),
                self.zipf_len
            );
        }
        let mut map: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut(GEN_ZIPF)
                .ok_or_else(|| anyhow!("bench object lacks {GEN_ZIPF}"))?,
        )?;
        for (i, p) in table.iter().enumerate() {
            map.set(i as u32, p, 0)?;
        }
        Ok(())
    }

    /// The config for `spec`, drawing pairs from the table when `zipf`.
    fn config(&self, spec: &GenSpec, zipf: bool) -> Result<GenConfig> {
        let mask = match (zipf, self.zipf_len) {
            (false, _) => 0,
            (true, 0) => bail!("no popularity table loaded"),
            (true, n) => n - 1,
        };
        spec.config(mask)
    }

    fn attach(&mut self, name: &str, ifindex: u32, mode: XdpMode) -> Result<()> {
        let prog = xdp_prog(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("the kernel rejected {name}"))?;
        }
        prog.attach_to_if_index(ifindex, mode)
            .with_context(|| format!("cannot attach {name} to ifindex {ifindex}"))?;
        Ok(())
    }

    /// Attaches the counting sink (`bench_drop`, native XDP) to `ifindex`.
    pub fn attach_sink(&mut self, ifindex: u32) -> Result<()> {
        self.attach(programs::BENCH_DROP, ifindex, XdpMode::Driver)
    }

    /// Frames the sink has counted so far, over all CPUs.
    pub fn sink_count(&self) -> Result<u64> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(BENCH_COUNT)
                .ok_or_else(|| anyhow!("bench object lacks {BENCH_COUNT}"))?,
        )?;
        Ok(map.get(&0, 0)?.iter().sum())
    }

    /// Forgets the frames the sink has kept so far.
    pub fn clear_samples(&mut self) -> Result<()> {
        let cpus = possible_cpus()?;
        let mut map: PerCpuArray<_, FrameSample> = PerCpuArray::try_from(
            self.ebpf
                .map_mut(SINK_SAMPLES)
                .ok_or_else(|| anyhow!("bench object lacks {SINK_SAMPLES}"))?,
        )?;
        for i in 0..SINK_SAMPLE_SLOTS {
            map.set(
                i,
                PerCpuValues::try_from(vec![FrameSample::default(); cpus])?,
                0,
            )?;
        }
        Ok(())
    }

    /// The frames the sink kept since [`Self::clear_samples`] (see
    /// `SINK_SAMPLE_SHIFT`), each cut to its first 60 bytes, with its length.
    pub fn samples(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let map: PerCpuArray<_, FrameSample> = PerCpuArray::try_from(
            self.ebpf
                .map(SINK_SAMPLES)
                .ok_or_else(|| anyhow!("bench object lacks {SINK_SAMPLES}"))?,
        )?;
        let mut out = Vec::new();
        for i in 0..SINK_SAMPLE_SLOTS {
            for s in map.get(&i, 0)?.iter().filter(|s| s.len != 0) {
                let n = (s.len as usize).min(FRAME_LEN);
                out.push((s.len, s.data[..n].to_vec()));
            }
        }
        Ok(out)
    }

    /// Attaches `bench_redirect` (native XDP) to `ifindex`, sending every
    /// frame out of `egress` untouched.
    pub fn attach_redirect(&mut self, ifindex: u32, egress: u32) -> Result<()> {
        {
            let mut tx: DevMap<_> = DevMap::try_from(
                self.ebpf
                    .map_mut(BENCH_TX)
                    .ok_or_else(|| anyhow!("bench object lacks {BENCH_TX}"))?,
            )?;
            tx.set(0, egress, None, 0)?;
        }
        self.attach(programs::BENCH_REDIRECT, ifindex, XdpMode::Driver)
    }

    /// Adds `entries` to the minimal NAT's map and their egresses to its devmap.
    pub fn add_min_nat(&mut self, entries: &[(Ipv4Addr, MinNatEntry)]) -> Result<()> {
        {
            let mut map: HashMap<_, u32, MinNatEntry> = HashMap::try_from(
                self.ebpf
                    .map_mut(MIN_NAT)
                    .ok_or_else(|| anyhow!("bench object lacks {MIN_NAT}"))?,
            )?;
            for (dst, e) in entries {
                map.insert(u32::from_ne_bytes(dst.octets()), e, 0)?;
            }
        }
        let mut tx: DevMapHash<_> = DevMapHash::try_from(
            self.ebpf
                .map_mut(MIN_NAT_TX)
                .ok_or_else(|| anyhow!("bench object lacks {MIN_NAT_TX}"))?,
        )?;
        let mut egress: Vec<u32> = entries.iter().map(|(_, e)| e.ifindex).collect();
        egress.sort_unstable();
        egress.dedup();
        for idx in egress {
            tx.insert(idx, idx, None, 0)?;
        }
        Ok(())
    }

    /// Attaches `bench_min_nat` (native XDP) to `ifindex`, translating each
    /// destination of `entries` (redirected out of the entry's interface).
    pub fn attach_min_nat(
        &mut self,
        ifindex: u32,
        entries: &[(Ipv4Addr, MinNatEntry)],
    ) -> Result<()> {
        self.add_min_nat(entries)?;
        self.attach(programs::BENCH_MIN_NAT, ifindex, XdpMode::Driver)
    }

    /// Sets what `bench_gen` sends (pairs drawn from the table when `zipf`)
    /// and starts its sequence over.
    pub fn set_gen(&mut self, spec: &GenSpec, zipf: bool) -> Result<()> {
        let cfg = self.config(spec, zipf)?;
        set_config(&mut self.ebpf, &cfg)?;
        self.template = spec.template();
        Ok(())
    }

    /// One `BPF_PROG_TEST_RUN` (no live frames) of `program` on `input`
    /// arriving on `ifindex`: its action and the frame it left.
    pub fn test_run_once(
        &mut self,
        program: &str,
        ifindex: u32,
        input: &[u8],
    ) -> Result<(u32, Vec<u8>)> {
        let prog = xdp_prog(&mut self.ebpf, program)?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("the kernel rejected {program}"))?;
        }
        let (action, _, out) = test_run(prog, input, ifindex, 1)?;
        Ok((action, out))
    }

    /// Sends `frames` frames written by `bench_gen` out of `ifindex`
    /// (XDP_TX with live frames, `batch` frames per kernel batch) and
    /// returns the mean time per frame as the kernel timed it (the test
    /// run's own work and the softirq it runs on this CPU; not the time the
    /// thread was not running). The frames leave through the
    /// interface's `ndo_xdp_xmit`: on a veth, the peer needs NAPI (an XDP
    /// program or GRO) or the frames are dropped.
    pub fn gen_run(&mut self, ifindex: u32, frames: u32, batch: u32) -> Result<Duration> {
        let prog = xdp_prog(&mut self.ebpf, programs::BENCH_GEN)?;
        if prog.fd().is_err() {
            prog.load()
                .context("the kernel rejected the generator program")?;
        }
        let ctx = xdp_ctx(FRAME_LEN, ifindex);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&self.template);
        opts.ctx_in = Some(&ctx);
        opts.repeat = frames.max(1);
        opts.attrs = aya::programs::TestRunAttrs::new().xdp_live_frames(batch);
        let result = prog
            .test_run(opts)
            .map_err(|e| anyhow!("BPF_PROG_TEST_RUN with live frames failed: {e}"))?;
        if result.return_value != 0 {
            bail!("the live-frames test run returned {}", result.return_value);
        }
        Ok(result.duration)
    }
}

/// Sets the generator's config and restarts its sequence on every CPU.
fn set_config(ebpf: &mut Ebpf, cfg: &GenConfig) -> Result<()> {
    let mut map: Array<_, GenConfig> = Array::try_from(
        ebpf.map_mut(GEN_CONFIG)
            .ok_or_else(|| anyhow!("bench object lacks {GEN_CONFIG}"))?,
    )?;
    map.set(0, *cfg, 0)?;
    let mut state: PerCpuArray<_, GenState> = PerCpuArray::try_from(
        ebpf.map_mut(GEN_STATE)
            .ok_or_else(|| anyhow!("bench object lacks {GEN_STATE}"))?,
    )?;
    state.set(
        0,
        PerCpuValues::try_from(vec![GenState::default(); possible_cpus()?])?,
        0,
    )?;
    Ok(())
}

/// The program whose cost a test run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostTarget {
    /// `bench_pass` behind the frame-writing wrapper: the floor of a wrapped run.
    Pass,
    /// `bench_lookup` (one hash lookup) behind the wrapper.
    Lookup,
    /// `bench_fib` (one FIB lookup) behind the wrapper.
    Fib,
    /// `bench_min_nat` (the minimal NAT) behind the wrapper.
    MinNat,
    /// The minimal NAT with the first N (1..=4) steps of the staircase
    /// ([`programs::BENCH_NAT_STAGES`]).
    NatStage(u8),
    External,
    Internal,
}

/// One measured run.
#[derive(Clone, Copy, Debug)]
pub struct CostRun {
    /// Return value of the last repetition.
    pub action: u32,
    /// Mean time per repetition, as the kernel measured it.
    pub ns_per_packet: f64,
    /// How much the data plane's `translated` counter grew.
    pub translated: u64,
}

/// The data-plane programs loaded (not attached) with maps pinned in a
/// private bpffs directory, behind `bench_cost`: every repetition of a test
/// run writes a new frame (the kernel does not restore the packet between
/// repetitions, so a translated packet would otherwise miss from the second
/// repetition on), spread over the configured addresses, then tail-calls
/// the program under test.
pub struct CostRig {
    ebpf: Ebpf,
    bench: BenchObject,
    bpffs: PathBuf,
    target: Option<CostTarget>,
}

impl CostRig {
    /// Loads with association maps of `max_associations` entries; `nics`
    /// are (ifindex, MAC, external?) of the interfaces the programs manage,
    /// in the namespace the runs will happen in.
    /// `zipf_len` sizes the table of popularity draws (a power of two, or 0
    /// for none); the minimal NAT's map holds `max_associations` entries.
    pub fn load(
        bpffs: &Path,
        max_associations: u32,
        nics: &[(u32, [u8; 6], Role)],
        zipf_len: u32,
    ) -> Result<Self> {
        if bpffs.exists() {
            bail!("{} already exists", bpffs.display());
        }
        ensure_bpffs(bpffs)?;
        let mut ebpf = load(bpffs, max_associations, None)?;
        for name in [programs::XDP_EXTERNAL, programs::XDP_INTERNAL] {
            xdp_prog(&mut ebpf, name)?
                .load()
                .with_context(|| format!("the kernel rejected {name}"))?;
        }
        super::attach::register_nics(&mut ebpf, nics.iter().map(|(i, m, r)| (*i, *m, *r)))?;
        let mut bench = BenchObject::load_sized(zipf_len, max_associations)?;
        {
            // The staircase's MAC check and lease: the rig's NICs, a lease that never ends.
            let mut ifaces: Array<_, IfaceSlot> = Array::try_from(
                bench
                    .ebpf
                    .map_mut("BENCH_IFACES")
                    .ok_or_else(|| anyhow!("bench object lacks BENCH_IFACES"))?,
            )?;
            for (idx, mac, _) in nics {
                ifaces.set(IfaceSlot::index(*idx), IfaceSlot::new(*idx, *mac), 0)?;
            }
            let mut lease: Array<_, u64> = Array::try_from(
                bench
                    .ebpf
                    .map_mut("BENCH_LEASE")
                    .ok_or_else(|| anyhow!("bench object lacks BENCH_LEASE"))?,
            )?;
            lease.set(0, u64::MAX, 0)?;
        }
        for name in [
            programs::BENCH_PASS,
            programs::BENCH_LOOKUP,
            programs::BENCH_FIB,
            programs::BENCH_MIN_NAT,
            programs::BENCH_NAT_STAGES[0],
            programs::BENCH_NAT_STAGES[1],
            programs::BENCH_NAT_STAGES[2],
            programs::BENCH_NAT_STAGES[3],
            BENCH_COST,
        ] {
            xdp_prog(&mut bench.ebpf, name)?
                .load()
                .with_context(|| format!("the kernel rejected {name}"))?;
        }
        Ok(Self {
            ebpf,
            bench,
            bpffs: bpffs.to_path_buf(),
            target: None,
        })
    }

    /// The map handle for filling associations.
    pub fn dataplane(&self) -> Result<Dataplane> {
        Dataplane::open(&self.bpffs)
    }

    fn set_target(&mut self, target: CostTarget) -> Result<()> {
        if self.target == Some(target) {
            return Ok(());
        }
        let (obj, name) = match target {
            CostTarget::Pass => (&mut self.bench.ebpf, programs::BENCH_PASS),
            CostTarget::Lookup => (&mut self.bench.ebpf, programs::BENCH_LOOKUP),
            CostTarget::Fib => (&mut self.bench.ebpf, programs::BENCH_FIB),
            CostTarget::MinNat => (&mut self.bench.ebpf, programs::BENCH_MIN_NAT),
            CostTarget::NatStage(n) => {
                let name = programs::BENCH_NAT_STAGES
                    .get(usize::from(n).wrapping_sub(1))
                    .ok_or_else(|| anyhow!("no staircase step {n}"))?;
                (&mut self.bench.ebpf, *name)
            }
            CostTarget::External => (&mut self.ebpf, programs::XDP_EXTERNAL),
            CostTarget::Internal => (&mut self.ebpf, programs::XDP_INTERNAL),
        };
        let fd = xdp_prog(obj, name)?.fd()?.try_clone()?;
        let mut jump: ProgramArray<_> = ProgramArray::try_from(
            self.bench
                .ebpf
                .map_mut(BENCH_JUMP)
                .ok_or_else(|| anyhow!("bench object lacks {BENCH_JUMP}"))?,
        )?;
        jump.set(0, &fd, 0)?;
        self.target = Some(target);
        Ok(())
    }

    fn translated(&self) -> Result<u64> {
        Ok(self
            .dataplane()?
            .outcomes()?
            .get(outcome::NAMES[outcome::TRANSLATED as usize])
            .copied()
            .unwrap_or(0))
    }

    /// Runs `target` behind the frame writer sending `spec`'s frames
    /// (destinations drawn from the table of [`Self::set_zipf`] when `zipf`),
    /// `repeat` times, with `ifindex` as the ingress interface.
    pub fn run(
        &mut self,
        target: CostTarget,
        spec: &GenSpec,
        zipf: bool,
        ifindex: u32,
        repeat: u32,
    ) -> Result<CostRun> {
        self.set_target(target)?;
        let cfg = self.bench.config(spec, zipf)?;
        set_config(&mut self.bench.ebpf, &cfg)?;
        let before = self.translated()?;
        let prog = xdp_prog(&mut self.bench.ebpf, BENCH_COST)?;
        let run = test_run(prog, &spec.template(), ifindex, repeat)?;
        Ok(CostRun {
            action: run.0,
            ns_per_packet: run.1,
            translated: self.translated()? - before,
        })
    }

    /// Puts `addr` into the key map of `bench_lookup`.
    pub fn add_lookup_key(&mut self, addr: Ipv4Addr) -> Result<()> {
        let mut keys: HashMap<_, u32, u32> = HashMap::try_from(
            self.bench
                .ebpf
                .map_mut(BENCH_KEYS)
                .ok_or_else(|| anyhow!("bench object lacks {BENCH_KEYS}"))?,
        )?;
        keys.insert(u32::from_ne_bytes(addr.octets()), 1, 0)?;
        Ok(())
    }

    /// See [`BenchObject::set_zipf`].
    pub fn set_zipf(&mut self, table: &[u32]) -> Result<()> {
        self.bench.set_zipf(table)
    }

    /// Fills the minimal NAT's map (and its devmap with the egresses).
    pub fn add_min_nat(&mut self, entries: &[(Ipv4Addr, MinNatEntry)]) -> Result<()> {
        self.bench.add_min_nat(entries)
    }

    /// Runs the bare `bench_pass` (no wrapper) on `frame`.
    pub fn run_bare_pass(&mut self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<CostRun> {
        let prog = xdp_prog(&mut self.bench.ebpf, programs::BENCH_PASS)?;
        let (action, ns_per_packet, _) = test_run(prog, frame, ifindex, repeat)?;
        Ok(CostRun {
            action,
            ns_per_packet,
            translated: 0,
        })
    }

    /// Kernel memory of every data-plane map (`memlock` of its fdinfo), by name.
    pub fn map_memory(&self) -> Result<Vec<(String, u64)>> {
        Ok(self
            .map_facts()?
            .into_iter()
            .map(|f| (f.name, f.memlock))
            .collect())
    }

    /// Type, sizes, flags and kernel memory of every data-plane map.
    pub fn map_facts(&self) -> Result<Vec<MapFacts>> {
        facts_of(&self.bpffs)
    }

    /// Removes the pins this rig made.
    pub fn cleanup(self) -> Result<()> {
        let bpffs = self.bpffs.clone();
        drop(self);
        for name in names::ALL {
            let _ = fs::remove_file(maps_dir(&bpffs).join(name));
        }
        for dir in [links_dir(&bpffs), maps_dir(&bpffs), bpffs.clone()] {
            let _ = fs::remove_dir(&dir);
        }
        Ok(())
    }
}

/// One test run of `prog` starting from `frame` (a wrapper turns it into
/// each repetition's frame): the last action, the mean ns per repetition
/// and the frame as the last repetition left it.
fn test_run(
    prog: &mut Xdp,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<(u32, f64, Vec<u8>)> {
    let ctx = xdp_ctx(frame.len(), ifindex);
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    opts.repeat = repeat.max(1);
    // The kernel reports the mean in whole nanoseconds, timing only the
    // repetitions (not the syscall, and not while the loop was rescheduled).
    let result = prog
        .test_run(opts)
        .map_err(|e| anyhow!("BPF_PROG_TEST_RUN failed: {e}"))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, result.duration.as_nanos() as f64, out))
}
