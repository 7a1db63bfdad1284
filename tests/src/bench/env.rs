//! What every part of the benchmark shares: interruption, namespaces,
//! commands in namespaces, timing helpers.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use tests::netns::{self, EXEC_TIMEOUT, Output};

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM only set a flag: the benchmark stops at its next
/// check and unwinds normally, so every RAII guard removes its namespaces
/// and pins. A second signal during that cleanup is ignored for the same reason.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Fails once a stop was requested.
pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted by signal {}", SIGNAL.load(Ordering::SeqCst));
    }
    Ok(())
}

/// Sleeps `d`, waking early (with an error) when a stop is requested.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// `/run/netns/NAME`.
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

/// Runs a configuration command and fails with its output unless it succeeds.
pub fn sh(argv: &[&str]) -> Result<Output> {
    netns::run(netns::host_command(argv), EXEC_TIMEOUT).check()
}

/// Runs `argv` in namespace `ns` (nsenter, our mounts) and fails unless it succeeds.
pub fn in_ns(ns: &str, argv: &[&str]) -> Result<Output> {
    netns::exec(ns, argv).check()
}

/// Writes `value` to a sysfs file of namespace `ns`. `ip netns exec` mounts
/// a sysfs of that namespace; nsenter would show the root namespace's.
pub fn ns_sysfs_write(ns: &str, file: &str, value: &str) -> Result<()> {
    let script = format!("echo {value} > {file}");
    sh(&["ip", "netns", "exec", ns, "sh", "-c", &script]).map(drop)
}

/// The MAC address of `ifname` in `ns`.
pub fn mac(ns: &str, ifname: &str) -> Result<[u8; 6]> {
    let out = sh(&["ip", "-n", ns, "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let text = v[0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("no address for {ifname} in {ns}"))?;
    parse_mac(text)
}

pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {text}");
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {text}"))?;
    }
    Ok(mac)
}

pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn link_up(ns: &str, ifname: &str) -> Result<()> {
    sh(&["ip", "-n", ns, "link", "set", ifname, "up"]).map(drop)
}

/// The `floatip` binary: `$FLOATIP_BIN`, else `floatip` beside this
/// executable (`cargo run` puts both in target/<profile>/), else where the
/// test harness looks.
pub fn floatip_binary() -> Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("floatip")));
    let p = match beside {
        Some(p) if std::env::var_os("FLOATIP_BIN").is_none() && p.is_file() => p,
        _ => netns::floatip_binary(),
    };
    if !p.is_file() {
        bail!(
            "floatip binary not found at {} (build it: `cargo build --release -p floatip-userspace`, or set FLOATIP_BIN)",
            p.display()
        );
    }
    Ok(p)
}

/// A floatip command line with the benchmark's private pins and database.
pub fn floatip_cmd(bin: &Path, bpffs: &Path, state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.arg("--bpffs")
        .arg(bpffs)
        .arg("--state")
        .arg(state)
        .args(args);
    c
}

/// Runs a command to completion (our namespace: call from a thread that
/// entered one) with its output discarded; fails with stderr unless it succeeds.
pub fn run_quiet(mut cmd: Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The median of `v` (mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The `p`-th percentile (nearest rank) of `v`; NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The 1-minute load average, to refuse measuring on a busy machine.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
