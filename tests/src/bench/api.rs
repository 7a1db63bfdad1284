//! The agent's API: associating and disassociating one floating IP through
//! `PUT /v2.0/floatingips/{id}` (`port_id` set, then cleared: what `openstack floating ip set
//! --port` and `unset --port` send), p50/p99 with 0, 10,000 and 100,000 associations in place,
//! next to the same change made by one `floatip ip associate` / `ip disassociate` process;
//! then the sustained rate of 1 and of 32 clients, each associating and disassociating its own
//! address as fast as the agent answers.
//!
//! The agent runs in the control benchmark's gateway namespace (`control::Ctl`: attached, one
//! pool of 198.18.0.0/15) on its loopback; every client is a thread that entered that
//! namespace, with one keep-alive HTTP connection, so a request costs what the agent does,
//! not a TCP handshake. The associations in place are made with the CLI's bulk path while the
//! agent runs (the agent and the CLI share database and maps).

use std::{
    collections::HashMap,
    fs,
    io::{Read, Write},
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::Path,
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use floatip::dataplane::bench::in_netns;
use serde_json::{Value, json};
use tests::{agent::LISTEN, netns::Spawned};

use super::{
    control::{Ctl, fixed, floating},
    env::{check_stop, floatip_cmd, median, netns_path, percentile, run_quiet},
};

const USER: (&str, &str) = ("bench", "bench-secret");
/// Clients of the sustained run.
pub const CLIENTS: usize = 32;

#[derive(Clone, Debug)]
pub struct OpLatency {
    pub associations: u32,
    /// `api` or `cli`.
    pub via: &'static str,
    /// `associate` or `disassociate`.
    pub op: &'static str,
    pub runs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug)]
pub struct Sustained {
    pub associations: u32,
    pub clients: usize,
    pub seconds: f64,
    /// Successful requests (each associates or disassociates).
    pub ops: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Share of the window the agent's control thread (the one database writer) was busy
    /// (`floatip_control_thread_busy_seconds_total`): near 1, it is the bound.
    pub control_busy: f64,
    /// Control operations per commit over the window (`floatip_control_batched_requests` /
    /// `floatip_control_batches`: the group commit's batch size; a job run alone is not
    /// counted), and the batches committed per second.
    pub batch_mean: f64,
    pub batches_per_s: f64,
}

#[derive(Clone, Debug, Default)]
pub struct ApiResult {
    pub latency: Vec<OpLatency>,
    pub sustained: Vec<Sustained>,
    /// p50 of one 4 KiB write + `fdatasync` in the state database's directory: what each
    /// commit pays at least (WAL, `synchronous=FULL`).
    pub fsync_ms: f64,
    /// Where an API request's time goes, from the agent's own figures over the latency runs:
    /// mean ms of a `PUT /v2.0/floatingips/{id}` as the agent measured it, and of the control
    /// thread's work per such request.
    pub breakdown: Option<(f64, f64)>,
    /// One `GET /metrics` with the largest count in place (ms, median of 3): it reads every
    /// pair's counters on the control thread, which meanwhile serves no write.
    pub scrape_ms: f64,
    /// An associate and a disassociate sent while a scrape is in flight (ms for both, median
    /// of 5): the scrape must not hold the writes up.
    pub write_during_scrape_ms: f64,
    /// The gratuitous ARP an association sends (`garp::announce` on the external NIC, as a
    /// CLI process sends it; the agent queues it instead), alone: (p50, p99) ms over the
    /// latency runs' count.
    pub garp_ms: (f64, f64),
    pub notes: Vec<String>,
}

/// The agent's test client (keep-alive; make it on a thread inside the namespace), as the
/// benchmark's user.
struct Client(tests::agent::Client);

impl Client {
    fn new() -> Self {
        Self(tests::agent::Client::new())
    }

    /// `METHOD path` with a JSON body; the body of a 2xx answer, else an error.
    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let text = body.map(Value::to_string);
        let r = self.0.raw(method, path, Some(USER), text.as_deref())?;
        if !(200..300).contains(&r.status) {
            bail!("{method} {path}: {} {}", r.status, r.text);
        }
        Ok(r.body)
    }

    /// `port_id` of floating IP `id` set to `port` (`None`: cleared); milliseconds.
    fn set_port(&self, id: &str, port: Option<&str>) -> Result<f64> {
        let body = json!({"floatingip": {"port_id": port}});
        let t = Instant::now();
        self.ok("PUT", &format!("/v2.0/floatingips/{id}"), Some(&body))?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }

    /// The agent's `/metrics`.
    fn metrics(&self) -> Result<String> {
        Ok(self.0.raw("GET", "/metrics", None, None)?.text)
    }
}

/// The sum of every sample `name` (with any labels) whose labels contain `labels`.
fn samples(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (tags, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            tags.contains(labels).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The control thread's busy seconds, batches and batched operations so far.
fn control_counters(c: &Client) -> Result<[f64; 3]> {
    let m = c.metrics()?;
    Ok([
        "floatip_control_thread_busy_seconds_total",
        "floatip_control_batches_total",
        "floatip_control_batched_requests_total",
    ]
    .map(|name| samples(&m, name, "")))
}

/// The addresses a run needs: a floating IP id and a port for each.
struct Slot {
    floating: String,
    port: String,
}

/// p50 of a 4 KiB write + fdatasync in `dir` (200 times), overwriting blocks of a file that
/// already has its size, as SQLite rewrites its WAL from the start after a checkpoint: the
/// data's flush without a size change to journal.
fn fsync_ms(dir: &Path) -> Result<f64> {
    const BLOCKS: u64 = 64;
    let path = dir.join("fsync-probe");
    let f = fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    let block = [0u8; 4096];
    for i in 0..BLOCKS {
        f.write_all_at(&block, i * 4096)?;
    }
    f.sync_all()?;
    let mut ms = Vec::with_capacity(200);
    for i in 0..200 {
        let t = Instant::now();
        f.write_all_at(&block, (i % BLOCKS) * 4096)?;
        f.sync_data()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(f);
    let _ = fs::remove_file(&path);
    Ok(median(&ms))
}

/// `floatip user create` of the benchmark's admin, password on stdin.
fn user_create(ctl: &Ctl) -> Result<()> {
    let mut c = floatip_cmd(
        &ctl.bin,
        &ctl.bpffs,
        &ctl.state,
        &[
            "user",
            "create",
            USER.0,
            "--project",
            "admin",
            "--role",
            "admin",
        ],
    );
    in_netns(&netns_path(&ctl.ns), || {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run floatip user create")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(format!("{}\n", USER.1).as_bytes())?;
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("piped")
            .read_to_string(&mut err)?;
        if !child.wait()?.success() {
            bail!("floatip user create: {}", err.trim());
        }
        Ok(())
    })
}

/// Ports for fixed IPs `first..first+n` and the ids of floating IPs `first..first+n`.
fn slots(c: &Client, first: u32, n: usize) -> Result<Vec<Slot>> {
    let nets = c.ok("GET", "/v2.0/networks?name=ci", None)?;
    let net = nets["networks"][0]["id"]
        .as_str()
        .context("no internal network ci")?
        .to_owned();
    let list = c.ok("GET", "/v2.0/floatingips", None)?;
    let ids: HashMap<String, String> = list["floatingips"]
        .as_array()
        .context("no floatingips")?
        .iter()
        .filter_map(|f| {
            Some((
                f["floating_ip_address"].as_str()?.to_owned(),
                f["id"].as_str()?.to_owned(),
            ))
        })
        .collect();
    (0..n as u32)
        .map(|k| {
            let i = first + k;
            let body = json!({"port": {
                "network_id": net,
                "name": format!("bench{i}"),
                "fixed_ips": [{"ip_address": fixed(i).to_string()}],
            }});
            let port = c.ok("POST", "/v2.0/ports", Some(&body))?["port"]["id"]
                .as_str()
                .context("port without id")?
                .to_owned();
            let floating = ids
                .get(&floating(i).to_string())
                .with_context(|| format!("no floating IP {}", floating(i)))?
                .clone();
            Ok(Slot { floating, port })
        })
        .collect()
}

/// Associates and disassociates `slots` through the API, each timed.
fn api_latency(c: &Client, level: u32, slots: &[Slot]) -> Result<[OpLatency; 2]> {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for s in slots {
        check_stop()?;
        on.push(c.set_port(&s.floating, Some(&s.port))?);
        off.push(c.set_port(&s.floating, None)?);
    }
    Ok(latencies(level, "api", on, off))
}

/// An associate and a disassociate of `slot`, sent a quarter of a scrape's time after a
/// `GET /metrics` on another connection started (ms for both, median of 5).
fn write_during_scrape(ns: &str, slot: &Slot, scrape_ms: f64) -> Result<f64> {
    let mut ms = Vec::new();
    for _ in 0..5 {
        check_stop()?;
        let took = std::thread::scope(|scope| -> Result<f64> {
            let scraper = scope.spawn(|| tests::agent::in_netns(ns, || Client::new().metrics()));
            std::thread::sleep(Duration::from_secs_f64(scrape_ms / 4e3));
            let took = tests::agent::in_netns(ns, || -> Result<f64> {
                let c = Client::new();
                let t = Instant::now();
                c.set_port(&slot.floating, Some(&slot.port))?;
                c.set_port(&slot.floating, None)?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            })?;
            scraper
                .join()
                .map_err(|_| anyhow::anyhow!("the scraping thread panicked"))??;
            Ok(took)
        })?;
        ms.push(took);
    }
    Ok(median(&ms))
}

/// The same changes as one CLI process each.
fn cli_latency(ctl: &Ctl, level: u32, first: u32, runs: usize) -> Result<[OpLatency; 2]> {
    let (bin, bpffs, state) = (ctl.bin.clone(), ctl.bpffs.clone(), ctl.state.clone());
    let (on, off) = in_netns(&netns_path(&ctl.ns), || {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for r in 0..runs as u32 {
            check_stop()?;
            let (f, x) = (
                floating(first + r).to_string(),
                fixed(first + r).to_string(),
            );
            for (args, out) in [
                (vec!["ip", "associate", &f, &x], &mut on),
                (vec!["ip", "disassociate", &f], &mut off),
            ] {
                let cmd = floatip_cmd(&bin, &bpffs, &state, &args);
                let t = Instant::now();
                run_quiet(cmd)?;
                out.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok((on, off))
    })?;
    Ok(latencies(level, "cli", on, off))
}

/// The associate and disassociate figures of one way of making the changes.
fn latencies(level: u32, via: &'static str, on: Vec<f64>, off: Vec<f64>) -> [OpLatency; 2] {
    [("associate", on), ("disassociate", off)].map(|(op, ms)| OpLatency {
        associations: level,
        via,
        op,
        runs: ms.len(),
        p50_ms: median(&ms),
        p99_ms: percentile(&ms, 99.0),
    })
}

/// `clients` threads, each with its own connection and address, associating and
/// disassociating for `window`.
fn sustained(ns: &str, level: u32, slots: &[Slot], window: Duration) -> Result<Sustained> {
    let before = tests::agent::in_netns(ns, || control_counters(&Client::new()))?;
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let results: Vec<Result<(Vec<f64>, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = slots
            .iter()
            .map(|slot| {
                let stop = &stop;
                s.spawn(move || {
                    tests::agent::in_netns(ns, || {
                        let c = Client::new();
                        let (mut ms, mut errors) = (Vec::new(), 0u64);
                        while !stop.load(Ordering::Relaxed) {
                            for port in [Some(slot.port.as_str()), None] {
                                match c.set_port(&slot.floating, port) {
                                    Ok(t) => ms.push(t),
                                    Err(_) => errors += 1,
                                }
                            }
                        }
                        Ok((ms, errors))
                    })
                })
            })
            .collect();
        while started.elapsed() < window && check_stop().is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    check_stop()?;
    let after = tests::agent::in_netns(ns, || control_counters(&Client::new()))?;
    let (mut all, mut errors) = (Vec::new(), 0);
    for r in results {
        let (ms, e) = r?;
        all.extend(ms);
        errors += e;
    }
    Ok(Sustained {
        associations: level,
        clients: slots.len(),
        seconds,
        ops: all.len() as u64,
        errors,
        p50_ms: median(&all),
        p99_ms: percentile(&all, 99.0),
        control_busy: (after[0] - before[0]) / seconds,
        batch_mean: (after[2] - before[2]) / (after[1] - before[1]).max(1.0),
        batches_per_s: (after[1] - before[1]) / seconds,
    })
}

/// `levels`: associations in place (ascending); `runs`: requests per latency figure;
/// `window`: length of each sustained run.
pub fn run(bin: &Path, levels: &[u32], runs: usize, window: Duration) -> Result<ApiResult> {
    let mut res = ApiResult::default();
    let top = levels.iter().copied().max().unwrap_or(0);
    let ctl = Ctl::build(bin, "api")?;
    res.fsync_ms = fsync_ms(ctl.state.parent().context("state has a directory")?)?;
    // The timed addresses first, so that listing them is cheap; the ones in place after.
    let first = top + 1;
    let (api_first, cli_first, load_first) = (first, first + runs as u32, first + 2 * runs as u32);
    let spare = 2 * runs + CLIENTS;
    ctl.allocate_rows(first, first + spare as u32 - 1)?;
    user_create(&ctl)?;
    let mut agent = in_netns(&netns_path(&ctl.ns), || {
        Spawned::start(floatip_cmd(
            &ctl.bin,
            &ctl.bpffs,
            &ctl.state,
            &["agent", "--listen", LISTEN],
        ))
    })?;
    agent
        .wait_for("serving the API on", Duration::from_secs(30))
        .context("the agent did not start")?;
    let ns = ctl.ns.clone();
    let (api_slots, load_slots) = tests::agent::in_netns(&ns, || -> Result<_> {
        let c = Client::new();
        Ok((slots(&c, api_first, runs)?, slots(&c, load_first, CLIENTS)?))
    })?;
    if top > 0 {
        ctl.allocate_rows(1, top)?;
    }
    res.notes.push(format!(
        "{} addresses inserted into the database with sqlite3, {} ports created through the API (untimed)",
        top as usize + spare,
        runs + CLIENTS
    ));
    let mut in_place = 0;
    for &level in levels {
        if level > in_place {
            let secs = ctl.bulk(in_place + 1, level - in_place)?;
            eprintln!(
                "  bulk {} associations onto {in_place} (agent running): {secs:.2} s",
                level - in_place
            );
            in_place = level;
        }
        let api = tests::agent::in_netns(&ns, || api_latency(&Client::new(), level, &api_slots))?;
        let cli = cli_latency(&ctl, level, cli_first, runs)?;
        for l in api.iter().chain(&cli) {
            eprintln!(
                "  {} {} with {level} in place: p50 {:.2} ms, p99 {:.2} ms",
                l.via, l.op, l.p50_ms, l.p99_ms
            );
        }
        res.latency.extend(api);
        res.latency.extend(cli);
    }
    // Where an API request's time goes: the agent's own latency of the PUTs, and the control
    // thread's time per request (its login check included), over all latency runs.
    res.breakdown = Some(tests::agent::in_netns(&ns, || -> Result<_> {
        let m = Client::new().metrics()?;
        let put = r#"route="/v2.0/floatingips/{id}",method="PUT",status="200""#;
        let name = "floatip_api_request_duration_seconds";
        let (sum, n) = (
            samples(&m, &format!("{name}_sum"), put),
            samples(&m, &format!("{name}_count"), put),
        );
        let busy = samples(&m, "floatip_control_thread_busy_seconds_total", "");
        let all = samples(&m, "floatip_api_requests_total", "");
        Ok((sum / n.max(1.0) * 1e3, busy / all.max(1.0) * 1e3))
    })?);
    res.garp_ms = in_netns(&netns_path(&ns), || {
        let (idx, mac) = (floatip::iface::index("ce")?, floatip::iface::mac("ce")?);
        let mut ms = Vec::with_capacity(runs);
        for i in 0..runs as u32 {
            let t = Instant::now();
            floatip::garp::announce(idx, &mac, floating(api_first + i))?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok((median(&ms), percentile(&ms, 99.0)))
    })?;
    eprintln!(
        "  gratuitous ARP alone: p50 {:.2} ms, p99 {:.2} ms",
        res.garp_ms.0, res.garp_ms.1
    );
    res.scrape_ms = tests::agent::in_netns(&ns, || -> Result<_> {
        let c = Client::new();
        let mut ms = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            c.metrics()?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median(&ms))
    })?;
    eprintln!(
        "  GET /metrics with {in_place} in place: {:.0} ms",
        res.scrape_ms
    );
    res.write_during_scrape_ms = write_during_scrape(&ns, &api_slots[0], res.scrape_ms)?;
    eprintln!(
        "  associate + disassociate sent during a scrape: {:.2} ms (median of 5)",
        res.write_during_scrape_ms
    );
    for clients in [1, CLIENTS] {
        let s = sustained(&ns, in_place, &load_slots[..clients], window)?;
        eprintln!(
            "  {} clients with {in_place} in place: {:.0} requests/s (p50 {:.2} ms, p99 {:.2} ms, \
             {} errors; control thread busy {:.0} %, {:.0} batches/s of {:.1} operations)",
            s.clients,
            s.ops as f64 / s.seconds,
            s.p50_ms,
            s.p99_ms,
            s.errors,
            s.control_busy * 100.0,
            s.batches_per_s,
            s.batch_mean
        );
        res.sustained.push(s);
    }
    agent.signal(libc::SIGTERM);
    let out = agent.finish(Duration::from_secs(10));
    if !out.success() {
        eprintln!("  the agent did not stop cleanly:\n{out}");
    }
    Ok(res)
}
