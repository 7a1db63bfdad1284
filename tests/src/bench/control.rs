//! Control plane: latency of one `floatip ip associate` process with many
//! associations in place, the bulk path (`ip associate --from-file`), the
//! state database on disk, and the Neutron way of doing the same: an
//! nftables ruleset with one DNAT and one SNAT rule per floating IP,
//! rebuilt with `nft -f`.
//!
//! Floating IPs come from 198.18.0.0/15 (the benchmarking range, RFC 2544),
//! fixed IPs from 10.1.0.0/16 and up: they are only ever map keys and rows.
//! Every command runs from a thread inside the control namespace, so the
//! timed process is `floatip` itself, without an `nsenter` in front.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use floatip::dataplane::bench::in_netns;
use tests::netns::Topology;

use super::env::{
    self, check_stop, floatip_cmd, link_up, median, netns_path, percentile, run_quiet, sh,
};

const POOL_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const FIXED_BASE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 0);
const POOL: &str = "bench";

/// Floating IP number `i` (from 1) of the pool.
pub(super) fn floating(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(POOL_BASE) + i)
}

pub(super) fn fixed(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIXED_BASE) + i)
}

#[derive(Clone, Debug)]
pub struct Latency {
    pub associations: u32,
    pub runs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug)]
pub struct Bulk {
    /// Associations already in place before the file.
    pub before: u32,
    pub count: u32,
    pub seconds: f64,
}

#[derive(Clone, Debug)]
pub struct NftRebuild {
    pub rules_per_direction: u32,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default)]
pub struct ControlResult {
    /// `floatip ip create` (one address per process), for scale.
    pub ip_create: Option<Latency>,
    pub associate: Vec<Latency>,
    pub bulk: Vec<Bulk>,
    pub nft: Vec<NftRebuild>,
    /// Bytes of the database (with its WAL) at the largest association count.
    pub db_bytes: Option<(u32, u64)>,
    /// How the addresses were allocated, for the report.
    pub notes: Vec<String>,
}

/// A floatip command line with the control benchmark's pins and database.
#[derive(Clone)]
struct Cli {
    bin: PathBuf,
    bpffs: PathBuf,
    state: PathBuf,
}

impl Cli {
    fn cmd(&self, args: &[&str]) -> Command {
        floatip_cmd(&self.bin, &self.bpffs, &self.state, args)
    }
}

/// One gateway namespace with floatip attached, a pool, and addresses.
pub(super) struct Ctl {
    // Last use is its drop: removes the namespace after detaching.
    _topo: Topology,
    pub(super) ns: String,
    pub(super) bin: PathBuf,
    pub(super) bpffs: PathBuf,
    pub(super) state: PathBuf,
}

impl Ctl {
    pub(super) fn build(bin: &Path, tag: &str) -> Result<Ctl> {
        let mut topo = Topology::new();
        let ns = topo.namespace(tag)?;
        let dir = topo.temp_dir(tag)?;
        let bpffs = PathBuf::from("/sys/fs/bpf").join(format!("{}-{tag}", topo.prefix()));
        let state = dir.join("state.db");
        {
            let (bin, bpffs, state, ns) =
                (bin.to_path_buf(), bpffs.clone(), state.clone(), ns.clone());
            topo.on_drop(move || {
                if bpffs.exists() {
                    let _ = in_netns(&netns_path(&ns), || {
                        run_quiet(floatip_cmd(&bin, &bpffs, &state, &["detach"]))
                    });
                    let _ = fs::remove_dir_all(&bpffs);
                }
            });
        }
        topo.veth(&ns, "ce", &ns, "cep")?;
        topo.veth(&ns, "ci", &ns, "cip")?;
        for ifname in ["ce", "cep", "ci", "cip"] {
            link_up(&ns, ifname)?;
        }
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            "203.0.113.2/24",
            "dev",
            "ce",
        ])?;
        // Every fixed IP is on-link behind the internal NIC, as `ip associate` checks.
        sh(&["ip", "-n", &ns, "addr", "add", "10.0.0.1/8", "dev", "ci"])?;
        let ctl = Ctl {
            _topo: topo,
            ns,
            bin: bin.to_path_buf(),
            bpffs,
            state,
        };
        ctl.floatip(&[
            "attach",
            "--external",
            "ce",
            "--internal",
            "ci",
            "--mode",
            "xdp",
            "--max-associations",
            "131072",
        ])?;
        ctl.floatip(&["pool", "create", POOL, "--range", "198.18.0.0/15"])?;
        Ok(ctl)
    }

    pub(super) fn cmd(&self, args: &[&str]) -> Command {
        self.cli().cmd(args)
    }

    fn cli(&self) -> Cli {
        Cli {
            bin: self.bin.clone(),
            bpffs: self.bpffs.clone(),
            state: self.state.clone(),
        }
    }

    pub(super) fn floatip(&self, args: &[&str]) -> Result<()> {
        let c = self.cmd(args);
        in_netns(&netns_path(&self.ns), || run_quiet(c))
    }

    /// Times `args` (one process each) in the namespace; `after` runs untimed after each.
    pub(super) fn time_each(
        &self,
        runs: usize,
        args: impl Fn(usize) -> Vec<String> + Send + Sync,
        after: impl Fn(usize) -> Option<Vec<String>> + Send + Sync,
    ) -> Result<Vec<f64>> {
        // The namespace guard is not Sync: the thread gets the command line only.
        let cli = self.cli();
        in_netns(&netns_path(&self.ns), || {
            let mut ms = Vec::with_capacity(runs);
            for r in 0..runs {
                check_stop()?;
                let a = args(r);
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                let c = cli.cmd(&a);
                let t = Instant::now();
                run_quiet(c)?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                if let Some(a) = after(r) {
                    let a: Vec<&str> = a.iter().map(String::as_str).collect();
                    run_quiet(cli.cmd(&a))?;
                }
            }
            Ok(ms)
        })
    }

    /// Adds addresses `first..=last` of the pool as rows directly with
    /// sqlite3: one `floatip ip create` process per address would take
    /// minutes for 100,000 and measure nothing this benchmark is about.
    pub(super) fn allocate_rows(&self, first: u32, last: u32) -> Result<()> {
        let sql = format!(
            "WITH RECURSIVE seq(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM seq WHERE i < {last}) \
             INSERT OR IGNORE INTO floating_ips (address, pool) SELECT {} + i, '{POOL}' FROM seq;",
            u32::from(POOL_BASE)
        );
        let out = Command::new("sqlite3")
            .arg(&self.state)
            .arg(&sql)
            .output()
            .context("cannot run sqlite3")?;
        if !out.status.success() {
            bail!(
                "sqlite3 failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Associates pairs `first..first+count` through `ip associate --from-file`; returns seconds.
    pub(super) fn bulk(&self, first: u32, count: u32) -> Result<f64> {
        let path = self
            .state
            .with_file_name(format!("bulk-{first}-{count}.txt"));
        let mut text = String::with_capacity(count as usize * 28);
        for i in first..first + count {
            text.push_str(&format!("{} {}\n", floating(i), fixed(i)));
        }
        fs::write(&path, text)?;
        let c = self.cmd(&["ip", "associate", "--from-file", &path.to_string_lossy()]);
        let secs = in_netns(&netns_path(&self.ns), || {
            let t = Instant::now();
            run_quiet(c)?;
            Ok(t.elapsed().as_secs_f64())
        })?;
        let _ = fs::remove_file(&path);
        Ok(secs)
    }

    /// Latency of one `ip associate` with `level` associations in place:
    /// each run associates a fresh address, then disassociates it (untimed)
    /// so the count stays at `level`.
    fn associate_latency(&self, level: u32, spare_first: u32, runs: usize) -> Result<Latency> {
        let ms = self.time_each(
            runs,
            |r| {
                let i = spare_first + r as u32;
                vec![
                    "ip".into(),
                    "associate".into(),
                    floating(i).to_string(),
                    fixed(i).to_string(),
                ]
            },
            |r| {
                let i = spare_first + r as u32;
                Some(vec![
                    "ip".into(),
                    "disassociate".into(),
                    floating(i).to_string(),
                ])
            },
        )?;
        Ok(Latency {
            associations: level,
            runs,
            p50_ms: median(&ms),
            p99_ms: percentile(&ms, 99.0),
        })
    }

    fn db_bytes(&self) -> u64 {
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|s| {
                let p = PathBuf::from(format!("{}{s}", self.state.display()));
                fs::metadata(p).ok().map(|m| m.len())
            })
            .sum()
    }
}

/// `levels`: association counts to measure latency at (ascending; 0 first);
/// `runs`: processes per latency figure; `nft_sizes`: rules per direction.
pub fn run(bin: &Path, levels: &[u32], runs: usize, nft_sizes: &[u32]) -> Result<ControlResult> {
    let mut res = ControlResult::default();
    let top = levels.iter().copied().max().unwrap_or(0);
    // Addresses 1..=top hold the associations; the latency runs use the ones after.
    let spare_first = top + 1;
    {
        let ctl = Ctl::build(bin, "ctl")?;
        let create_runs = runs.min(100);
        let ms = ctl.time_each(
            create_runs,
            |_| vec!["ip".into(), "create".into(), POOL.into()],
            |_| None,
        )?;
        res.ip_create = Some(Latency {
            associations: 0,
            runs: create_runs,
            p50_ms: median(&ms),
            p99_ms: percentile(&ms, 99.0),
        });
        ctl.allocate_rows(create_runs as u32 + 1, spare_first + runs as u32)?;
        res.notes.push(format!(
            "{create_runs} addresses allocated with `floatip ip create` (timed), the other {} inserted into the database with sqlite3",
            spare_first + runs as u32 - create_runs as u32
        ));
        let mut in_place = 0;
        for &level in levels {
            if level > in_place {
                let secs = ctl.bulk(in_place + 1, level - in_place)?;
                res.bulk.push(Bulk {
                    before: in_place,
                    count: level - in_place,
                    seconds: secs,
                });
                eprintln!(
                    "  bulk {} associations onto {in_place}: {secs:.2} s",
                    level - in_place
                );
                in_place = level;
            }
            let l = ctl.associate_latency(level, spare_first, runs)?;
            eprintln!(
                "  ip associate with {level} in place: p50 {:.2} ms, p99 {:.2} ms",
                l.p50_ms, l.p99_ms
            );
            res.associate.push(l);
        }
        res.db_bytes = Some((in_place, ctl.db_bytes()));
        drop(ctl);
    }
    // The bulk rate from an empty database, for each size above 10,000 already
    // measured onto existing associations.
    for &level in levels.iter().filter(|l| **l > 10_000) {
        check_stop()?;
        let ctl = Ctl::build(bin, "ctlb")?;
        ctl.allocate_rows(1, level)?;
        let secs = ctl.bulk(1, level)?;
        eprintln!("  bulk {level} associations onto 0: {secs:.2} s");
        res.bulk.push(Bulk {
            before: 0,
            count: level,
            seconds: secs,
        });
    }
    // nftables: the same scale as one ruleset per floating IP pair.
    if !nft_sizes.is_empty() {
        let mut topo = Topology::new();
        let ns = topo.namespace("nft")?;
        let dir = topo.temp_dir("nft")?;
        for &n in nft_sizes {
            check_stop()?;
            let path = dir.join(format!("neutron-{n}.nft"));
            fs::write(&path, neutron_ruleset(n))?;
            let p = path.to_string_lossy().into_owned();
            let secs = in_netns(&netns_path(&ns), || {
                // The first load creates the table; the timed one replaces it,
                // as an agent resyncing its floating IPs does.
                env::run_quiet({
                    let mut c = Command::new("nft");
                    c.args(["-f", &p]);
                    c
                })?;
                let t = Instant::now();
                env::run_quiet({
                    let mut c = Command::new("nft");
                    c.args(["-f", &p]);
                    c
                })?;
                Ok(t.elapsed().as_secs_f64())
            })?;
            eprintln!("  nft -f with {n} DNAT + {n} SNAT rules: {secs:.2} s");
            res.nft.push(NftRebuild {
                rules_per_direction: n,
                seconds: secs,
            });
        }
        drop(topo);
    }
    Ok(res)
}

/// A full ruleset replacing the previous one (`flush ruleset` first), one
/// DNAT and one SNAT rule per floating IP.
fn neutron_ruleset(n: u32) -> String {
    let mut s = String::with_capacity(n as usize * 100 + 512);
    s.push_str("flush ruleset\ntable ip neutron {\n  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n");
    for i in 1..=n {
        s.push_str(&format!(
            "    ip daddr {} dnat to {}\n",
            floating(i),
            fixed(i)
        ));
    }
    s.push_str("  }\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    for i in 1..=n {
        s.push_str(&format!(
            "    ip saddr {} snat to {}\n",
            fixed(i),
            floating(i)
        ));
    }
    s.push_str("  }\n}\n");
    s
}
