//! The aya side of the benchmarks and of the traffic generator: the
//! benchmark-only programs of `floatip-ebpf/src/bin/bench.rs` (sink,
//! redirect-only forwarder, generator) and a rig that measures the cost per
//! packet of the data-plane programs with `BPF_PROG_TEST_RUN`.
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
    Ebpf, TestRunOptions,
    maps::{Array, DevMap, HashMap, MapData, PerCpuArray, ProgramArray, xdp::DevMapHash},
    programs::{TestRun, Xdp, xdp::XdpMode},
};
use floatip_common::{IfaceInfo, maps as names, outcome, programs};

use super::{
    BENCH_OBJECT, Dataplane, Role,
    attach::load,
    pins::{ensure_bpffs, links_dir, maps_dir},
    xdp_ctx,
};

/// The wrapper that writes a fresh frame and tail-calls the program under test.
pub const BENCH_COST: &str = "bench_cost";
const GEN_CONFIG: &str = "GEN_CONFIG";
const BENCH_COUNT: &str = "BENCH_COUNT";
const BENCH_TX: &str = "BENCH_TX";
const BENCH_JUMP: &str = "BENCH_JUMP";
const BENCH_KEYS: &str = "BENCH_KEYS";

/// Length of the frames `bench_gen` and `bench_cost` write (64 bytes on a
/// wire, with the FCS).
pub const FRAME_LEN: usize = 60;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub use floatip_common::GenConfig;

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
}

impl BenchObject {
    pub fn load() -> Result<Self> {
        let ebpf = Ebpf::load(BENCH_OBJECT).context("cannot load the bench object")?;
        Ok(Self { ebpf })
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

    pub fn set_gen_config(&mut self, cfg: &GenConfig) -> Result<()> {
        set_config(&mut self.ebpf, cfg)
    }

    /// Sends `frames` frames written by `bench_gen` out of `ifindex`
    /// (XDP_TX with live frames, `batch` frames per kernel batch) and
    /// returns the time the kernel spent. The frames leave through the
    /// interface's `ndo_xdp_xmit`: on a veth, the peer needs NAPI (an XDP
    /// program or GRO) or the frames are dropped.
    pub fn gen_run(&mut self, ifindex: u32, frames: u32, batch: u32) -> Result<Duration> {
        let prog = xdp_prog(&mut self.ebpf, programs::BENCH_GEN)?;
        if prog.fd().is_err() {
            prog.load()
                .context("the kernel rejected the generator program")?;
        }
        let data = [0u8; FRAME_LEN];
        let ctx = xdp_ctx(FRAME_LEN, ifindex);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&data);
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

fn set_config(ebpf: &mut Ebpf, cfg: &GenConfig) -> Result<()> {
    let mut map: Array<_, GenConfig> = Array::try_from(
        ebpf.map_mut(GEN_CONFIG)
            .ok_or_else(|| anyhow!("bench object lacks {GEN_CONFIG}"))?,
    )?;
    map.set(0, *cfg, 0)?;
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
    bench: Ebpf,
    bpffs: PathBuf,
    target: Option<CostTarget>,
}

impl CostRig {
    /// Loads with association maps of `max_associations` entries; `nics`
    /// are (ifindex, MAC, external?) of the interfaces the programs manage,
    /// in the namespace the runs will happen in.
    pub fn load(
        bpffs: &Path,
        max_associations: u32,
        nics: &[(u32, [u8; 6], Role)],
    ) -> Result<Self> {
        if bpffs.exists() {
            bail!("{} already exists", bpffs.display());
        }
        ensure_bpffs(bpffs)?;
        let mut ebpf = load(bpffs, max_associations)?;
        for name in [programs::XDP_EXTERNAL, programs::XDP_INTERNAL] {
            xdp_prog(&mut ebpf, name)?
                .load()
                .with_context(|| format!("the kernel rejected {name}"))?;
        }
        {
            let mut ifaces: HashMap<_, u32, IfaceInfo> =
                HashMap::try_from(ebpf.map_mut(names::IFACES).unwrap())?;
            for (idx, mac, role) in nics {
                ifaces.insert(
                    idx,
                    IfaceInfo {
                        mac: *mac,
                        role: role.to_map(),
                        _pad: 0,
                    },
                    0,
                )?;
            }
        }
        {
            let mut devmap: DevMapHash<_> =
                DevMapHash::try_from(ebpf.map_mut(names::REDIRECT).unwrap())?;
            for (idx, _, _) in nics {
                devmap.insert(*idx, *idx, None, 0)?;
            }
        }
        let mut bench = Ebpf::load(BENCH_OBJECT).context("cannot load the bench object")?;
        for name in [
            programs::BENCH_PASS,
            programs::BENCH_LOOKUP,
            programs::BENCH_FIB,
            BENCH_COST,
        ] {
            xdp_prog(&mut bench, name)?
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
            CostTarget::Pass => (&mut self.bench, programs::BENCH_PASS),
            CostTarget::Lookup => (&mut self.bench, programs::BENCH_LOOKUP),
            CostTarget::Fib => (&mut self.bench, programs::BENCH_FIB),
            CostTarget::External => (&mut self.ebpf, programs::XDP_EXTERNAL),
            CostTarget::Internal => (&mut self.ebpf, programs::XDP_INTERNAL),
        };
        let fd = xdp_prog(obj, name)?.fd()?.try_clone()?;
        let mut jump: ProgramArray<_> = ProgramArray::try_from(
            self.bench
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

    /// Runs `target` behind the frame writer configured with `cfg`,
    /// `repeat` times, with `ifindex` as the ingress interface.
    pub fn run(
        &mut self,
        target: CostTarget,
        cfg: &GenConfig,
        ifindex: u32,
        repeat: u32,
    ) -> Result<CostRun> {
        self.set_target(target)?;
        set_config(&mut self.bench, cfg)?;
        let before = self.translated()?;
        let prog = xdp_prog(&mut self.bench, BENCH_COST)?;
        let run = test_run(prog, ifindex, repeat)?;
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
                .map_mut(BENCH_KEYS)
                .ok_or_else(|| anyhow!("bench object lacks {BENCH_KEYS}"))?,
        )?;
        keys.insert(u32::from_ne_bytes(addr.octets()), 1, 0)?;
        Ok(())
    }

    /// Runs the bare `bench_pass` (no wrapper) on a fixed frame.
    pub fn run_bare_pass(&mut self, ifindex: u32, repeat: u32) -> Result<CostRun> {
        let prog = xdp_prog(&mut self.bench, programs::BENCH_PASS)?;
        let (action, ns_per_packet) = test_run(prog, ifindex, repeat)?;
        Ok(CostRun {
            action,
            ns_per_packet,
            translated: 0,
        })
    }

    /// Kernel memory of every data-plane map (`memlock` of its fdinfo), by name.
    pub fn map_memory(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for name in names::ALL {
            let data = MapData::from_pin(maps_dir(&self.bpffs).join(name))?;
            let fd = data.fd().as_fd().as_raw_fd();
            let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
            let memlock = info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| anyhow!("no memlock in the fdinfo of {name}"))?;
            out.push((name.to_string(), memlock));
        }
        Ok(out)
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

/// One test run of `prog` over a zeroed frame (the wrapper writes it):
/// the last action and the mean ns per repetition.
fn test_run(prog: &mut Xdp, ifindex: u32, repeat: u32) -> Result<(u32, f64)> {
    let data = [0u8; FRAME_LEN];
    let ctx = xdp_ctx(FRAME_LEN, ifindex);
    let mut out = [0u8; FRAME_LEN + 64];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&data);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    opts.repeat = repeat.max(1);
    // The kernel reports the mean in whole nanoseconds, timing only the
    // repetitions (not the syscall, and not while the loop was rescheduled).
    let result = prog
        .test_run(opts)
        .map_err(|e| anyhow!("BPF_PROG_TEST_RUN failed: {e}"))?;
    Ok((result.return_value, result.duration.as_nanos() as f64))
}
