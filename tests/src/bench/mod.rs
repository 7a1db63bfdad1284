//! The benchmark driver behind `cargo xtask bench`: parses the flags, runs
//! the parts (program cost, data-plane throughput, control plane and
//! memory, the agent's API), prints one Markdown report, and writes `--json`
//! and `--plot`.

mod api;
mod control;
mod cost;
mod env;
mod gateways;
mod memory;
mod plot;
mod throughput;

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

use self::{
    api::ApiResult,
    control::ControlResult,
    cost::{Case, CostResult},
    memory::MemoryResult,
    throughput::{GeneratorKind, MODES, Mode, Placement, PlacementResult, Rig, Timing},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum GeneratorArg {
    /// The project's own: `bench_gen` through BPF_PROG_TEST_RUN with live frames.
    Xdp,
    /// netsniff-ng's trafgen.
    Trafgen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    Cost,
    Throughput,
    Control,
    Memory,
    /// The agent's API against the CLI.
    Api,
    /// A gateway group on etcd: propagation, failover, cold start.
    Gateways,
}

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask bench",
    about = "floatip against nftables NAT and plain forwarding, side by side, in namespaces of its own"
)]
struct Args {
    /// Smoke check in under 2 minutes: short windows, smaller scales.
    #[arg(long)]
    quick: bool,
    /// Write every figure as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Draw the throughput comparison as a PNG bar chart at PATH.
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,
    /// Distinct UDP source ports of the offered traffic.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    flows: u32,
    /// Frames per kernel batch of the XDP generator (1..=256).
    #[arg(long, value_name = "N", default_value_t = 64)]
    batch: u32,
    /// Traffic generator of the throughput matrix.
    #[arg(long, value_enum, default_value_t = GeneratorArg::Xdp)]
    generator: GeneratorArg,
    /// Run only these parts (repeatable); all by default.
    #[arg(long, value_enum, value_name = "PART")]
    only: Vec<Part>,
    /// Rounds of the throughput matrix (default 3 with --quick, else 5).
    #[arg(long)]
    rounds: Option<usize>,
    /// Association counts of the program cost (repeatable, 1..=1,000,000; default 1,
    /// 10,000 and 1,000,000, or 1 and 10,000 with --quick).
    #[arg(long = "associations", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    associations: Vec<u32>,
    /// Measure only these throughput modes (repeatable), e.g. `--mode floatip-xdp`.
    #[arg(long = "mode", value_name = "MODE")]
    modes: Vec<String>,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    env::install_signal_handlers();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
    load: f64,
    load_end: f64,
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel,
        load: env::load_average(),
        load_end: f64::NAN,
    }
}

/// Everything measured, for the report and the JSON.
#[derive(Default)]
struct Results {
    cost: Vec<CostResult>,
    cost_repeat: u32,
    cost_rounds: usize,
    throughput: Vec<PlacementResult>,
    timing: Option<Timing>,
    control: Option<ControlResult>,
    memory: Option<MemoryResult>,
    api: Option<ApiResult>,
    gateways: Option<gateways::GatewaysResult>,
}

fn run(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark must run as root (namespaces, veths, XDP, bpffs)");
    }
    let started = Instant::now();
    let floatip = env::floatip_binary()?;
    let m = machine();
    if m.load > 1.5 {
        eprintln!(
            "warning: load average {:.2} on {} cores: other work will skew the figures",
            m.load, m.cores
        );
    }
    let want = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let mut res = Results::default();

    if want(Part::Cost) {
        eprintln!("program cost (BPF_PROG_TEST_RUN)");
        let counts: &[u32] = if !args.associations.is_empty() {
            &args.associations
        } else if args.quick {
            &[1, 10_000]
        } else {
            &[1, 10_000, 1_000_000]
        };
        res.cost_repeat = if args.quick { 1_000_000 } else { 2_000_000 };
        res.cost_rounds = if args.quick { 1 } else { 5 };
        res.cost = cost::run(counts, res.cost_repeat, res.cost_rounds)?;
    }

    if want(Part::Throughput) {
        let generator = match args.generator {
            GeneratorArg::Xdp => GeneratorKind::Xdp,
            GeneratorArg::Trafgen => GeneratorKind::Trafgen,
        };
        let timing = if args.quick {
            Timing {
                rounds: args.rounds.unwrap_or(3),
                warmup: Duration::from_millis(300),
                window: Duration::from_millis(700),
            }
        } else {
            Timing {
                rounds: args.rounds.unwrap_or(5),
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(3),
            }
        };
        eprintln!(
            "data-plane throughput ({} generator, {} flows, {} rounds)",
            generator.name(),
            args.flows,
            timing.rounds
        );
        let modes: Vec<Mode> = MODES
            .iter()
            .copied()
            .filter(|m| args.modes.is_empty() || args.modes.contains(&m.name()))
            .collect();
        if modes.is_empty() {
            bail!(
                "no such mode; the modes are {}",
                MODES.map(Mode::name).join(", ")
            );
        }
        let mut rig = Rig::build(&floatip, args.flows, args.batch)?;
        for placement in [Placement::OneCpu, Placement::TwoCpus] {
            res.throughput
                .push(rig.run_placement(placement, &modes, generator, &timing)?);
        }
        if !args.quick && args.modes.is_empty() {
            // nftables throughput with a Neutron-sized ruleset in front of the rule that matches.
            let big: Vec<Mode> = [1_000, 10_000, 100_000].map(Mode::NftablesNat).to_vec();
            let r = rig.run_placement(Placement::OneCpu, &big, generator, &timing)?;
            let one = res
                .throughput
                .iter_mut()
                .find(|p| p.placement == Placement::OneCpu)
                .expect("measured above");
            one.samples.extend(r.samples);
        }
        drop(rig);
        res.timing = Some(timing);
    }

    if want(Part::Memory) {
        eprintln!("map memory at scale");
        let bpffs = PathBuf::from(format!(
            "/sys/fs/bpf/floatip-bench-memory-{}",
            std::process::id()
        ));
        res.memory = Some(memory::run(&bpffs)?);
    }

    if want(Part::Control) {
        eprintln!("control plane");
        let (levels, runs, nft): (&[u32], usize, &[u32]) = if args.quick {
            (&[0, 10_000], 30, &[1_000, 10_000])
        } else {
            (&[0, 10_000, 100_000], 200, &[1_000, 10_000, 100_000])
        };
        res.control = Some(control::run(&floatip, levels, runs, nft)?);
    }

    if want(Part::Api) {
        eprintln!("the agent's API");
        let (levels, runs, window): (&[u32], usize, Duration) = if args.quick {
            (&[0, 10_000], 30, Duration::from_secs(3))
        } else {
            (&[0, 10_000, 100_000], 200, Duration::from_secs(10))
        };
        res.api = Some(api::run(&floatip, levels, runs, window)?);
    }

    if want(Part::Gateways) {
        eprintln!("a gateway group on etcd");
        let (runs, kills, cold) = if args.quick {
            (10, 2, 10_000)
        } else {
            (50, 5, 100_000)
        };
        res.gateways = Some(gateways::run(&floatip, runs, kills, cold)?);
    }

    let m = Machine {
        load_end: env::load_average(),
        ..m
    };
    let report = markdown(args, &m, &res);
    println!("{report}");
    if let Some(path) = &args.json {
        let v = to_json(args, &m, &res, started.elapsed());
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        if res.throughput.is_empty() {
            eprintln!("no throughput measured: no chart drawn");
        } else {
            draw(path, args, &res)?;
            eprintln!("wrote {}", path.display());
        }
    }
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn generator_name(args: &Args) -> &'static str {
    match args.generator {
        GeneratorArg::Xdp => GeneratorKind::Xdp.name(),
        GeneratorArg::Trafgen => GeneratorKind::Trafgen.name(),
    }
}

fn draw(path: &std::path::Path, args: &Args, res: &Results) -> Result<()> {
    let series: Vec<&str> = res
        .throughput
        .iter()
        .map(|p| match p.placement {
            Placement::OneCpu => "everything on one CPU",
            Placement::TwoCpus => "generator CPU0, gateway CPU1",
        })
        .collect();
    let groups: Vec<plot::Group> = MODES
        .iter()
        .map(|m| plot::Group {
            label: m.name(),
            values: res
                .throughput
                .iter()
                .map(|p| p.median(*m).unwrap_or(f64::NAN))
                .collect(),
        })
        .collect();
    let title = format!(
        "64-byte UDP to a floating IP, {} flows, {} generator",
        args.flows,
        generator_name(args)
    );
    plot::bar_chart(path, &title, &series, &groups)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

fn markdown(args: &Args, m: &Machine, res: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(
        s,
        "{}, {} cores, kernel {}; 1-minute load average {:.2} at the start, {:.2} at the end (other work on the machine skews the figures).\n",
        m.cpu, m.cores, m.kernel, m.load, m.load_end
    );
    if !res.cost.is_empty() {
        let _ = writeln!(
            s,
            "## Program cost (BPF_PROG_TEST_RUN, {} repetitions per run, median of {} runs, ns per packet)\n",
            res.cost_repeat, res.cost_rounds
        );
        let _ = write!(s, "| case |");
        for c in &res.cost {
            let _ = write!(s, " {} assoc. |", thousands(c.associations as u64));
        }
        let _ = write!(s, "\n|---|");
        for _ in &res.cost {
            let _ = write!(s, "---:|");
        }
        s.push('\n');
        for case in cost::CASES {
            let _ = write!(s, "| {} |", case.name());
            for c in &res.cost {
                let _ = write!(s, " {:.1} |", c.get(case));
            }
            s.push('\n');
        }
        for case in cost::DELTA_CASES {
            let _ = write!(s, "| {} − xdp-pass |", case.name());
            for c in &res.cost {
                let _ = write!(s, " **{:+.1}** |", c.get(case) - c.get(Case::Pass));
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\n`xdp-pass` is the frame-writing wrapper (`bench_cost`) in front of `bench_pass`; every other case is the same wrapper in front of the floatip program, so the difference is the program's own cost. `xdp-pass (bare)` is `bench_pass` alone. `one hash lookup` and `one fib lookup` are the same wrapper in front of a program that does only that step (a hit, and a lookup that finds route and neighbour): the cost of the steps a translated and forwarded packet cannot avoid on this machine. `minimal-nat` is the floor of any NAT: one lookup whose entry holds the new address, both MACs and the egress, the rewrite and the redirect. Uniform cases send frame n to pair n mod N; `zipf` cases to pairs drawn from Zipf(1.0) over the N pairs.\n"
        );
        for c in &res.cost {
            let _ = writeln!(
                s,
                "- {} association(s) loaded with `nat_add_bulk` in {:.2} s",
                thousands(c.associations as u64),
                c.load_time.as_secs_f64()
            );
        }
        s.push('\n');
    }
    if !res.throughput.is_empty() {
        let t = res.timing.as_ref();
        let _ = writeln!(
            s,
            "## Data-plane throughput ({} generator, 64-byte UDP to a floating IP from {} source ports; Mpps counted at the sink, median of {} rounds of {:.1} s windows)\n",
            generator_name(args),
            args.flows,
            t.map_or(0, |t| t.rounds),
            t.map_or(0.0, |t| t.window.as_secs_f64())
        );
        let _ = write!(s, "| mode |");
        for p in &res.throughput {
            let _ = write!(
                s,
                " {} Mpps | × nftables-nat | generator ns/frame |",
                p.placement.name()
            );
        }
        let _ = write!(s, "\n|---|");
        for _ in &res.throughput {
            let _ = write!(s, "---:|---:|---:|");
        }
        s.push('\n');
        let mut modes: Vec<Mode> = MODES.to_vec();
        for p in &res.throughput {
            for (m, _) in &p.samples {
                if !modes.contains(m) {
                    modes.push(*m);
                }
            }
        }
        for mode in modes {
            let _ = write!(s, "| {} |", mode.name());
            for p in &res.throughput {
                let v = p.median(mode);
                let nft = p.median(Mode::NftablesNat(1));
                let _ = write!(
                    s,
                    " {} | {} | {} |",
                    fmt_opt(v, 3),
                    fmt_opt(ratio(v, nft), 2),
                    fmt_opt(p.median_gen_ns(mode), 0)
                );
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\n`generator ns/frame` is the XDP generator's test runs as the kernel timed them: with one CPU the gateway and the sink run in the generator's softirq, so it is the whole path's cost per frame, without the time other work had the CPU (steadier than Mpps on a busy machine). Every figure is checked: the sink keeps every 4096th frame and each kept frame must be, byte for byte, what the mode makes of a generated frame; for floatip modes the sink may not count more frames than floatip translated.\n"
        );
        for p in &res.throughput {
            let r = |a: Mode, b: Mode| fmt_opt(ratio(p.median(a), p.median(b)), 2);
            let _ = writeln!(
                s,
                "- {}: floatip-xdp / xdp-redirect = **{}**, floatip-xdp / minimal-nat = **{}**, floatip-xdp / nftables-nat = **{}**, floatip-tc / nftables-nat = **{}**, sink-only / floatip-xdp = **{}**",
                p.placement.name(),
                r(Mode::FloatipXdp, Mode::XdpRedirect),
                r(Mode::FloatipXdp, Mode::MinimalNat),
                r(Mode::FloatipXdp, Mode::NftablesNat(1)),
                r(Mode::FloatipTc, Mode::NftablesNat(1)),
                r(Mode::SinkOnly, Mode::FloatipXdp),
            );
            for e in p.errors() {
                let _ = writeln!(s, "  - no figure in some rounds: {e}");
            }
            let sink = p.median(Mode::SinkOnly).unwrap_or(0.0);
            let best = MODES
                .iter()
                .filter(|m| **m != Mode::SinkOnly)
                .filter_map(|m| p.median(*m))
                .fold(0.0, f64::max);
            if sink > 0.0 && best > 0.85 * sink {
                let _ = writeln!(
                    s,
                    "  - the best gateway mode reaches {:.0} % of sink-only: the generator, not the gateway, may be the limit there",
                    100.0 * best / sink
                );
            }
        }
        s.push('\n');
    }
    if let Some(c) = &res.control {
        let _ = writeln!(s, "## Control plane\n");
        let _ = writeln!(
            s,
            "| command | associations in place | runs | p50 ms | p99 ms |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        if let Some(l) = &c.ip_create {
            let _ = writeln!(
                s,
                "| floatip ip create | 0 | {} | {:.2} | {:.2} |",
                l.runs, l.p50_ms, l.p99_ms
            );
        }
        for l in &c.associate {
            let _ = writeln!(
                s,
                "| floatip ip associate | {} | {} | {:.2} | {:.2} |",
                thousands(l.associations as u64),
                l.runs,
                l.p50_ms,
                l.p99_ms
            );
        }
        let _ = writeln!(
            s,
            "\n| bulk `ip associate --from-file` | onto | seconds | associations/s |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|");
        for b in &c.bulk {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {} |",
                thousands(b.count as u64),
                thousands(b.before as u64),
                b.seconds,
                thousands((b.count as f64 / b.seconds) as u64)
            );
        }
        let _ = writeln!(
            s,
            "\n| nftables ruleset (Neutron style) | `nft -f` rebuild, seconds |"
        );
        let _ = writeln!(s, "|---:|---:|");
        for n in &c.nft {
            let _ = writeln!(
                s,
                "| {} DNAT + {} SNAT rules | {:.2} |",
                thousands(n.rules_per_direction as u64),
                thousands(n.rules_per_direction as u64),
                n.seconds
            );
        }
        s.push('\n');
        for note in &c.notes {
            let _ = writeln!(s, "- {note}");
        }
        s.push('\n');
    }
    if let Some(a) = &res.api {
        api_markdown(&mut s, a);
    }
    if let Some(g) = &res.gateways {
        gateways_markdown(&mut s, g);
    }
    let big = res.cost.iter().max_by_key(|c| c.associations);
    if big.is_some() || res.control.as_ref().and_then(|c| c.db_bytes).is_some() {
        let _ = writeln!(s, "## Memory\n");
        if let Some(c) = big {
            let total: u64 = c.map_memory.iter().map(|(_, b)| b).sum();
            let _ = writeln!(
                s,
                "- maps with {} associations: **{:.1} MB** in total (memlock of the map fds: {})",
                thousands(c.associations as u64),
                total as f64 / 1e6,
                c.map_memory
                    .iter()
                    .map(|(n, b)| format!("{n} {:.1} MB", *b as f64 / 1e6))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some((n, bytes)) = res.control.as_ref().and_then(|c| c.db_bytes) {
            let _ = writeln!(
                s,
                "- state database with {} associations: **{:.1} MB** on disk (with WAL)",
                thousands(n as u64),
                bytes as f64 / 1e6
            );
        }
        s.push('\n');
    }
    if let Some(mem) = &res.memory {
        memory_section(&mut s, mem);
    }
    let _ = writeln!(s, "## Targets\n");
    for t in targets(res) {
        let _ = writeln!(s, "- {}", t.line());
    }
    s
}

fn mb(b: u64) -> String {
    format!("{:.1}", b as f64 / 1e6)
}

fn memory_section(s: &mut String, mem: &MemoryResult) {
    let here = mem.cpus_here;
    let _ = writeln!(
        s,
        "## Map memory at scale ({} associations, computed from each map's type, sizes and entries as the kernel accounts them; MB)\n",
        thousands(mem.associations as u64)
    );
    let _ = write!(s, "| map | type | key + value B | entries |");
    for c in memory::CPU_COUNTS {
        let _ = write!(s, " {c} CPUs |");
    }
    let _ = writeln!(s, " kernel, {here} CPUs | model, {here} CPUs |");
    let _ = write!(s, "|---|---|---:|---:|");
    for _ in memory::CPU_COUNTS {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s, "---:|---:|");
    let _ = write!(s, "| *association counters (the loader's choice)* | | | |");
    for (_, c) in &mem.counters {
        let _ = write!(s, " {} |", c.as_str());
    }
    let _ = writeln!(
        s,
        " {} | {} |",
        mem.counters_here.as_str(),
        mem.counters_here.as_str()
    );
    for m in &mem.maps {
        let f = &m.facts;
        // The counter maps' entries differ with the choice: one figure per CPU column then.
        let entries = if m.entries.iter().all(|(_, n)| *n == f.max_entries) {
            thousands(f.max_entries as u64)
        } else {
            m.entries
                .iter()
                .map(|(_, n)| thousands(*n as u64))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = write!(
            s,
            "| {} | {:?} | {} + {} | {entries} |",
            f.name, f.kind, f.key_size, f.value_size,
        );
        for (_, b) in &m.at {
            let _ = write!(s, " {} |", b.map_or("?".into(), mb));
        }
        let _ = writeln!(
            s,
            " {} | {} |",
            mb(f.memlock),
            m.here.map_or("?".into(), mb)
        );
    }
    let _ = write!(s, "| **total** | | | |");
    for c in memory::CPU_COUNTS {
        let _ = write!(s, " **{}** |", mb(mem.total(c)));
    }
    let _ = writeln!(
        s,
        " **{}** | **{}** |\n",
        mb(mem.kernel_total()),
        mb(mem.model_total_here())
    );
    let (k, m) = (mem.kernel_total(), mem.model_total_here());
    let off: Vec<String> = mem
        .maps
        .iter()
        .filter_map(|x| {
            let d = x.here? as i64 - x.facts.memlock as i64;
            (d != 0).then(|| format!("{} {d:+} B", x.facts.name))
        })
        .collect();
    let _ = writeln!(
        s,
        "- cross-check with the kernel's own figure for this machine's {here} possible CPUs: model {} B, kernel {} B{}",
        thousands(m),
        thousands(k),
        if off.is_empty() {
            ", equal for every map".to_string()
        } else {
            format!("; differing: {}", off.join(", "))
        }
    );
    let _ = writeln!(
        s,
        "- association counters: per-CPU where they take at most {} MiB, else shared (one copy, atomic adds); per-CPU ones for {} associations would take {}",
        floatip_common::PER_CPU_COUNTERS_BUDGET >> 20,
        thousands(mem.associations as u64),
        memory::CPU_COUNTS
            .iter()
            .map(|c| format!(
                "{} MB at {c} CPUs",
                mb(floatip_common::per_cpu_counters_bytes(
                    mem.associations,
                    *c as u32
                ))
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !mem.by_use().is_empty() {
        let _ = writeln!(
            s,
            "- counted empty, since they grow with their entries (pool prefixes, interfaces), not with associations: {}",
            mem.by_use()
                .iter()
                .map(|(n, full)| format!("{n} (full: {} MB)", mb(*full)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !mem.unknown().is_empty() {
        let _ = writeln!(
            s,
            "- not modelled (counted at this machine's figure at every CPU count): {}",
            mem.unknown().join(", ")
        );
    }
    for cpus in [64, 128] {
        if let Some((big, bytes)) = mem.largest(cpus) {
            let f = &big.facts;
            let _ = writeln!(
                s,
                "- at {cpus} CPUs the largest map is {} ({:?}, {} entries of {} B): {} MB, {:.0} % of {} MB",
                f.name,
                f.kind,
                thousands(f.max_entries as u64),
                f.value_size,
                mb(bytes),
                100.0 * bytes as f64 / mem.total(cpus) as f64,
                mb(mem.total(cpus))
            );
        }
    }
    s.push('\n');
}

fn api_markdown(s: &mut String, a: &ApiResult) {
    let _ = writeln!(s, "## The agent's API\n");
    let _ = writeln!(
        s,
        "| change | via | associations in place | runs | p50 ms | p99 ms |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for l in &a.latency {
        let via = match l.via {
            "api" => "`PUT /v2.0/floatingips/{id}`",
            _ => "one `floatip ip` process",
        };
        let _ = writeln!(
            s,
            "| {} | {via} | {} | {} | {:.2} | {:.2} |",
            l.op,
            thousands(l.associations as u64),
            l.runs,
            l.p50_ms,
            l.p99_ms
        );
    }
    let _ = writeln!(
        s,
        "\n| clients | associations in place | seconds | requests | requests/s | p50 ms | p99 ms | errors | control thread busy | batches/s | operations per batch |"
    );
    let _ = writeln!(
        s,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for t in &a.sustained {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} % | {:.0} | {:.1} |",
            t.clients,
            thousands(t.associations as u64),
            t.seconds,
            thousands(t.ops),
            t.ops as f64 / t.seconds,
            t.p50_ms,
            t.p99_ms,
            t.errors,
            t.control_busy * 100.0,
            t.batches_per_s,
            t.batch_mean
        );
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "- one 4 KiB overwrite + fdatasync in the state directory: {:.2} ms (p50 of 200); every commit pays at least one",
        a.fsync_ms
    );
    if let Some((request, control)) = a.breakdown {
        let _ = writeln!(
            s,
            "- the agent's own figures over the latency runs: a `PUT` takes {request:.2} ms from arrival to answer; the control thread works {control:.2} ms per request"
        );
    }
    let _ = writeln!(
        s,
        "- the gratuitous ARP an association sends, as the CLI sends it (`garp::announce`: three rounds 2 ms apart, the socket closed by a forked child), alone: p50 {:.2} ms, p99 {:.2} ms; the agent queues it to its announcing thread instead",
        a.garp_ms.0, a.garp_ms.1
    );
    let top = a.latency.iter().map(|l| l.associations).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "- one `GET /metrics` with {} associations in place: {:.0} ms (it reads every pair's counters, beside the control thread); an associate and a disassociate sent during one: {:.2} ms for both",
        thousands(top as u64),
        a.scrape_ms,
        a.write_during_scrape_ms
    );
    for note in &a.notes {
        let _ = writeln!(s, "- {note}");
    }
    s.push('\n');
}

/// One target: a figure of this run against its limit.
struct Target {
    /// What is compared, e.g. "floatip-xdp / xdp-redirect (one CPU)".
    what: String,
    /// The measured figure (a ratio unless `unit` says otherwise).
    value: f64,
    limit: f64,
    /// The figure must be at most (else at least) the limit.
    at_most: bool,
    unit: &'static str,
}

impl Target {
    fn met(&self) -> bool {
        if self.at_most {
            self.value <= self.limit
        } else {
            self.value >= self.limit
        }
    }

    fn line(&self) -> String {
        let (op, digits) = (if self.at_most { "≤" } else { "≥" }, 2);
        format!(
            "{} {op} {}{u}: {:.digits$}{u} — {}",
            self.what,
            self.limit,
            self.value,
            if self.met() { "met" } else { "**missed**" },
            u = self.unit
        )
    }

    fn json(&self) -> Value {
        json!({
            "target": self.what,
            "value": self.value,
            "limit": self.limit,
            "at_most": self.at_most,
            "unit": self.unit,
            "met": self.met(),
        })
    }
}

/// The targets (issue 13's first, then the control plane's), each computed
/// from this run's figures; a target whose figures were not measured is left out.
fn gateways_markdown(s: &mut String, g: &gateways::GatewaysResult) {
    let _ = writeln!(s, "## A gateway group on etcd\n");
    let _ = writeln!(
        s,
        "3-member etcd cluster (election timeout 500 ms), gateways with `--lease-ttl {}`, in namespaces on this machine.\n",
        g.lease_ttl_s
    );
    let _ = writeln!(
        s,
        "| gateways | associations | propagation p50 | p99 |\n|---|---|---|---|"
    );
    for p in &g.propagation {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} ms | {:.1} ms |",
            p.gateways, p.runs, p.p50_ms, p.p99_ms
        );
    }
    s.push('\n');
    if let Some(m) = g.failover_median() {
        let each: Vec<String> = g.failovers.iter().map(|f| format!("{f:.2}")).collect();
        let _ = writeln!(
            s,
            "- failover (owner's agent SIGKILLed, its NICs down; UDP at 1,000/s): median outage **{m:.2} s** ({} s)",
            each.join(", ")
        );
    }
    if let Some((n, t, j)) = g.cold_start {
        let _ = writeln!(
            s,
            "- cold start on empty maps with {} associations in etcd: all applied after **{t:.2} s** (joined the group after {j:.2} s)",
            thousands(n as u64)
        );
    }
    for note in &g.notes {
        let _ = writeln!(s, "- {note}");
    }
    s.push('\n');
}

fn targets(res: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    let mut push = |what: String, value: Option<f64>, limit: f64, at_most: bool, unit| {
        if let Some(value) = value.filter(|v| v.is_finite()) {
            out.push(Target {
                what,
                value,
                limit,
                at_most,
                unit,
            });
        }
    };
    if let Some(p) = res
        .throughput
        .iter()
        .find(|p| p.placement == Placement::OneCpu)
    {
        let r = |a: Mode, b: Mode| ratio(p.median(a), p.median(b));
        for (a, b, limit) in [
            (Mode::FloatipXdp, Mode::XdpRedirect, 0.9),
            (Mode::FloatipXdp, Mode::MinimalNat, 1.0),
            (Mode::FloatipXdp, Mode::NftablesNat(1), 5.0),
            (Mode::FloatipTc, Mode::NftablesNat(1), 2.0),
            // The harness: generator and sink alone must leave room.
            (Mode::SinkOnly, Mode::FloatipXdp, 3.0),
        ] {
            push(
                format!("{} / {} (one CPU, Mpps)", a.name(), b.name()),
                r(a, b),
                limit,
                false,
                "×",
            );
        }
    }
    let delta = |c: &CostResult, k: Case| c.get(k) - c.get(Case::Pass);
    if let Some(c) = res.cost.iter().find(|c| c.associations == 1) {
        let lookup = delta(c, Case::LookupFloor);
        for (k, limit) in [(Case::Dnat, 2.0), (Case::Snat, 2.0), (Case::Hairpin, 3.0)] {
            push(
                format!(
                    "({} − xdp-pass) / (one hash lookup − xdp-pass), 1 association",
                    k.name()
                ),
                (lookup > 0.0).then(|| delta(c, k) / lookup),
                limit,
                true,
                "×",
            );
        }
        if let Some(big) = res.cost.iter().find(|c| c.associations == 1_000_000) {
            for (z, k) in [(Case::DnatZipf, Case::Dnat), (Case::SnatZipf, Case::Snat)] {
                let one = delta(c, k);
                push(
                    format!(
                        "({} − xdp-pass) at 1,000,000 / ({} − xdp-pass) at 1 association",
                        z.name(),
                        k.name()
                    ),
                    (one > 0.0).then(|| delta(big, z) / one),
                    2.0,
                    true,
                    "×",
                );
            }
        }
    }
    if let Some(m) = &res.memory {
        push(
            format!(
                "map memory for {} associations at 64 CPUs",
                thousands(m.associations as u64)
            ),
            Some(m.total(64) as f64 / 1e9),
            memory::LIMIT_AT_64 as f64 / 1e9,
            true,
            " GB",
        );
    }
    if let Some(c) = &res.control {
        if let Some(l0) = c.associate.iter().find(|l| l.associations == 0) {
            push(
                "ip associate p50".into(),
                Some(l0.p50_ms),
                10.0,
                true,
                " ms",
            );
            if let Some(l) = c.associate.iter().find(|l| l.associations == 100_000) {
                push(
                    "ip associate p50 at 100,000 / at 0".into(),
                    Some(l.p50_ms / l0.p50_ms),
                    1.5,
                    true,
                    "×",
                );
            }
        }
        if let Some(b) = c.bulk.iter().find(|b| b.count == 100_000 && b.before == 0) {
            push(
                "100,000 bulk associations".into(),
                Some(b.seconds),
                5.0,
                true,
                " s",
            );
        }
    }
    if let Some(a) = &res.api {
        for l in a.latency.iter().filter(|l| l.via == "api") {
            let what = |q| {
                format!(
                    "API {} {q} with {} in place",
                    l.op,
                    thousands(l.associations as u64)
                )
            };
            push(what("p50"), Some(l.p50_ms), 2.0, true, " ms");
            push(what("p99"), Some(l.p99_ms), 10.0, true, " ms");
        }
    }
    if let Some(g) = &res.gateways {
        for p in &g.propagation {
            push(
                format!("propagation p99 with {} gateway(s)", p.gateways),
                Some(p.p99_ms),
                50.0,
                true,
                " ms",
            );
        }
        push(
            format!("failover outage, median of {}", g.failovers.len()),
            g.failover_median(),
            2.0,
            true,
            " s",
        );
        if let Some((n, s, _)) = g.cold_start {
            push(
                format!("cold start with {} associations", thousands(n as u64)),
                Some(s),
                5.0,
                true,
                " s",
            );
        }
    }
    if let Some(c) = res.cost.iter().find(|c| c.associations == 1_000_000) {
        let total: u64 = c.map_memory.iter().map(|(_, b)| b).sum();
        push(
            "map memory (memlock) with 1,000,000 associations on this machine".into(),
            Some(total as f64 / 1e6),
            250.0,
            true,
            " MB",
        );
    }
    out
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn memory_json(m: &MemoryResult) -> Value {
    json!({
        "associations": m.associations,
        "cpus_here": m.cpus_here,
        "counters": m.counters.iter().map(|(c, k)| (c.to_string(), json!(k.as_str()))).collect::<serde_json::Map<_, _>>(),
        "counters_here": m.counters_here.as_str(),
        "total_bytes": memory::CPU_COUNTS.iter().map(|c| (c.to_string(), json!(m.total(*c)))).collect::<serde_json::Map<_, _>>(),
        "kernel_total_bytes_here": m.kernel_total(),
        "model_total_bytes_here": m.model_total_here(),
        "maps": m.maps.iter().map(|x| json!({
            "name": x.facts.name,
            "type": format!("{:?}", x.facts.kind),
            "key_size": x.facts.key_size,
            "value_size": x.facts.value_size,
            "max_entries": x.facts.max_entries,
            "flags": x.facts.flags,
            "kernel_bytes_here": x.facts.memlock,
            "model_bytes_here": x.here,
            "model_bytes": x.at.iter().map(|(c, b)| (c.to_string(), json!(b))).collect::<serde_json::Map<_, _>>(),
            "max_entries_at": x.entries.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

fn to_json(args: &Args, m: &Machine, res: &Results, elapsed: Duration) -> Value {
    let cost: Vec<Value> = res
        .cost
        .iter()
        .map(|c| {
            json!({
                "associations": c.associations,
                "ns_per_packet": c.ns.iter().map(|(k, v)| (k.name().to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "delta_to_pass_ns": (cost::DELTA_CASES.iter()
                    .map(|k| (k.name().to_string(), json!(c.get(*k) - c.get(Case::Pass))))
                    .collect::<serde_json::Map<_, _>>()),
                "load_seconds": c.load_time.as_secs_f64(),
                "map_memlock_bytes": c.map_memory.iter().map(|(n, b)| (n.clone(), json!(b))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    let throughput: Vec<Value> = res
        .throughput
        .iter()
        .map(|p| {
            let nft = p.median(Mode::NftablesNat(1));
            json!({
                "placement": p.placement.name(),
                "floatip_xdp_over_xdp_redirect": ratio(p.median(Mode::FloatipXdp), p.median(Mode::XdpRedirect)),
                "floatip_xdp_over_minimal_nat": ratio(p.median(Mode::FloatipXdp), p.median(Mode::MinimalNat)),
                "sink_only_over_floatip_xdp": ratio(p.median(Mode::SinkOnly), p.median(Mode::FloatipXdp)),
                "modes": p.samples.iter().map(|(mode, s)| json!({
                    "mode": mode.name(),
                    "median_mpps": p.median(*mode),
                    "ratio_to_nftables_nat": ratio(p.median(*mode), nft),
                    "samples_mpps": s.iter().map(|x| x.mpps).collect::<Vec<_>>(),
                    "offered_mpps": s.iter().map(|x| x.offered_mpps).collect::<Vec<_>>(),
                    "generator_ns_per_frame": s.iter().map(|x| x.gen_ns).collect::<Vec<_>>(),
                    "errors": s.iter().filter_map(|x| x.error.clone()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let control = res.control.as_ref().map(|c| {
        json!({
            "ip_create": c.ip_create.as_ref().map(|l| json!({"runs": l.runs, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms})),
            "ip_associate": c.associate.iter().map(|l| json!({
                "associations_in_place": l.associations, "runs": l.runs, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms,
            })).collect::<Vec<_>>(),
            "bulk": c.bulk.iter().map(|b| json!({
                "count": b.count, "onto": b.before, "seconds": b.seconds,
                "per_second": b.count as f64 / b.seconds,
            })).collect::<Vec<_>>(),
            "nft_rebuild": c.nft.iter().map(|n| json!({
                "rules_per_direction": n.rules_per_direction, "seconds": n.seconds,
            })).collect::<Vec<_>>(),
            "state_db_bytes": c.db_bytes.map(|(n, b)| json!({"associations": n, "bytes": b})),
            "notes": c.notes,
        })
    });
    let api = res.api.as_ref().map(|a| {
        json!({
            "latency": a.latency.iter().map(|l| json!({
                "via": l.via, "op": l.op, "associations_in_place": l.associations,
                "runs": l.runs, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms,
            })).collect::<Vec<_>>(),
            "sustained": a.sustained.iter().map(|t| json!({
                "clients": t.clients, "associations_in_place": t.associations,
                "seconds": t.seconds, "requests": t.ops, "per_second": t.ops as f64 / t.seconds,
                "p50_ms": t.p50_ms, "p99_ms": t.p99_ms, "errors": t.errors,
                "control_thread_busy": t.control_busy,
                "batches_per_second": t.batches_per_s, "operations_per_batch": t.batch_mean,
            })).collect::<Vec<_>>(),
            "fsync_ms": a.fsync_ms,
            "put_ms_and_control_ms_per_request": a.breakdown,
            "metrics_scrape_ms": a.scrape_ms,
            "write_during_scrape_ms": a.write_during_scrape_ms,
            "garp_p50_p99_ms": [a.garp_ms.0, a.garp_ms.1],
            "notes": a.notes,
        })
    });
    let gateways = res.gateways.as_ref().map(|g| {
        json!({
            "propagation": g.propagation.iter().map(|p| json!({
                "gateways": p.gateways, "runs": p.runs, "p50_ms": p.p50_ms, "p99_ms": p.p99_ms,
            })).collect::<Vec<_>>(),
            "failover_outage_seconds": g.failovers,
            "failover_median_seconds": g.failover_median(),
            "lease_ttl_seconds": g.lease_ttl_s,
            "cold_start": g.cold_start.map(|(n, s, j)| json!({
                "associations": n, "seconds_until_applied": s, "seconds_until_joined": j,
            })),
            "notes": g.notes,
        })
    });
    json!({
        "machine": {"cpu": m.cpu, "cores": m.cores, "kernel": m.kernel, "load_average_at_start": m.load, "load_average_at_end": m.load_end},
        "command": std::env::args().collect::<Vec<_>>(),
        "quick": args.quick,
        "generator": generator_name(args),
        "flows": args.flows,
        "frame_bytes": 64,
        "elapsed_seconds": elapsed.as_secs_f64(),
        "program_cost": {
            "repeat": res.cost_repeat,
            "runs": res.cost_rounds,
            "results": cost,
        },
        "throughput": {
            "rounds": res.timing.as_ref().map(|t| t.rounds),
            "window_seconds": res.timing.as_ref().map(|t| t.window.as_secs_f64()),
            "warmup_seconds": res.timing.as_ref().map(|t| t.warmup.as_secs_f64()),
            "placements": throughput,
        },
        "control_plane": control,
        "memory_at_scale": res.memory.as_ref().map(memory_json),
        "api": api,
        "gateways": gateways,
        "targets": targets(res).iter().map(Target::json).collect::<Vec<_>>(),
    })
}
