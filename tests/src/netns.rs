//! Network-namespace topologies for end-to-end tests of the floatip data plane.
//!
//! [`Topology`] is a generic RAII guard: it creates namespaces and veth
//! pairs and its `Drop` removes every one of them (also while unwinding
//! from a failed assertion), after running any registered cleanups and
//! killing whatever still runs inside its namespaces. [`Lab`] builds the
//! standard floatip topology on top of it:
//!
//! ```text
//!  ext               rtr                          gw                       sw (bridge br0)
//!  eth0 ---------- r-ext | r-gw ---------- gw-ext | gw-int ---------- s-gw
//!  198.51.100.2/24  198.51.100.1 203.0.113.1   203.0.113.2  10.0.0.1/24   s-i1 ---- eth0 inst1 10.0.0.11/24
//!                                                                          s-i2 ---- eth0 inst2 10.0.0.12/24
//! ```
//!
//! Floating IPs 203.0.113.10 (inst1) and 203.0.113.11 (inst2) sit on the
//! 203.0.113.0/24 segment without being configured anywhere: the router
//! ARPs for them and the gateway's programs answer.
//!
//! Every name is unique per topology (`fipt<pid>x<counter>-<role>` for
//! namespaces and the bpffs/state directories). Interfaces are created
//! directly inside their namespaces, so their short fixed names (at most 15
//! bytes) never meet another test's. Nothing ever runs in, or sends traffic
//! from, the root namespace: commands go through `nsenter --net=...`, which
//! (unlike `ip netns exec`) keeps the caller's mounts, so the bpffs pins
//! floatip makes stay visible.

use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::Read,
    os::fd::AsRawFd,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

/// Default time limit of [`exec`].
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

pub const EXT_IP: &str = "198.51.100.2";
pub const RTR_EXT_IP: &str = "198.51.100.1";
pub const RTR_GW_IP: &str = "203.0.113.1";
pub const GW_EXT_IP: &str = "203.0.113.2";
pub const GW_INT_IP: &str = "10.0.0.1";
pub const INST1_IP: &str = "10.0.0.11";
pub const INST2_IP: &str = "10.0.0.12";
pub const FIP1: &str = "203.0.113.10";
pub const FIP2: &str = "203.0.113.11";

// ---------------------------------------------------------------- serialization

static SERIAL: Mutex<()> = Mutex::new(());

/// Held while a namespace test runs; see [`serialize`].
pub struct Serial {
    _guard: MutexGuard<'static, ()>,
    _lock: Option<File>,
}

/// Serializes namespace tests: a process-wide mutex (tests of one binary
/// run on threads) plus an `flock` on a file in /run/lock (other test
/// binaries using this harness). Each test is correct in parallel; this
/// only keeps 2 shared cores from timing out TCP streams and pings.
pub fn serialize() -> Serial {
    // A test that panicked while holding the lock poisons it; the next one may still run.
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/lock/floatip-netns-tests.lock")
        .ok();
    if let Some(f) = &lock {
        // SAFETY: flock on a descriptor this function owns; released when the file closes.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    }
    Serial {
        _guard: guard,
        _lock: lock,
    }
}

/// Fails (does not skip) when not root: these tests need CAP_NET_ADMIN and
/// CAP_SYS_ADMIN (namespaces, veths, XDP, bpffs).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the namespace tests must run as root (they create network namespaces, veths, XDP/TCX \
         programs and bpffs pins); euid is {euid}"
    );
}

// ---------------------------------------------------------------- processes

/// What a finished command printed and how it ended.
#[derive(Clone, Debug)]
pub struct Output {
    pub cmd: String,
    /// `None` when the command could not be started or was killed on timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    /// `Ok(self)` on success, otherwise an error showing the command and everything it printed.
    pub fn check(self) -> Result<Output> {
        if self.success() {
            Ok(self)
        } else {
            Err(anyhow!("{self}"))
        }
    }

    /// stdout followed by stderr.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.timed_out {
            "timed out and was killed".to_string()
        } else {
            match self.status {
                Some(s) => format!("ended with {s}"),
                None => "could not be run".to_string(),
            }
        };
        writeln!(f, "`{}` {how}", self.cmd)?;
        writeln!(f, "--- stdout ---\n{}", tail(self.stdout.trim_end(), 6000))?;
        write!(f, "--- stderr ---\n{}", tail(self.stderr.trim_end(), 6000))
    }
}

/// Panics, printing the command's stdout and stderr, unless it succeeded.
#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(out.success(), "command failed:\n{out}");
}

/// Panics unless the command succeeded and its output contains `needle`.
#[track_caller]
pub fn assert_contains(out: &Output, needle: &str) {
    assert_success(out);
    assert!(
        out.all().contains(needle),
        "output lacks {needle:?}:\n{out}"
    );
}

/// Panics if the command's output contains `needle`.
#[track_caller]
pub fn assert_not_contains(out: &Output, needle: &str) {
    assert!(
        !out.all().contains(needle),
        "output contains {needle:?}:\n{out}"
    );
}

/// A background process, killed (SIGKILL) when dropped. Its stdout and
/// stderr are collected by two threads so it never blocks on a full pipe.
pub struct Spawned {
    cmd: String,
    child: Option<Child>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn pump(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut b = [0u8; 16 * 1024];
        loop {
            match r.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&b[..n]),
            }
        }
    })
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Spawned {
    /// Starts `cmd` with stdin closed and stdout/stderr collected.
    pub fn start(mut cmd: Command) -> Result<Spawned> {
        let desc = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{desc}`"))?;
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            pump(child.stdout.take().expect("piped stdout"), out.clone()),
            pump(child.stderr.take().expect("piped stderr"), err.clone()),
        ];
        Ok(Spawned {
            cmd: desc,
            child: Some(child),
            out,
            err,
            readers,
        })
    }

    pub fn cmd(&self) -> &str {
        &self.cmd
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits until stdout or stderr contains `needle` (e.g. a server's
    /// "listening" line); fails if the process exits first or time runs out.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout_so_far().contains(needle) || self.stderr_so_far().contains(needle) {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(c) => c.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() >= deadline {
                // Let the readers drain what is left before reporting.
                thread::sleep(Duration::from_millis(50));
                let why = if exited { "exited" } else { "timed out" };
                bail!(
                    "`{}` {why} before printing {needle:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.cmd,
                    self.stdout_so_far().trim_end(),
                    self.stderr_so_far().trim_end()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has not exited yet.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `sig` to the process (by its pid, only if it is still ours to reap).
    pub fn signal(&mut self, sig: libc::c_int) {
        if let Some(c) = self.child.as_mut()
            && matches!(c.try_wait(), Ok(None))
        {
            // SAFETY: the pid is our un-reaped child, so it cannot have been recycled.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// Waits for the process to exit; kills it after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let mut child = self.child.take().expect("finish runs once");
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    timed_out = true;
                    let _ = child.kill();
                    break child.wait().ok();
                }
                Err(_) => break None,
            }
        };
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
        Output {
            cmd: self.cmd.clone(),
            status,
            stdout: self.stdout_so_far(),
            stderr: self.stderr_so_far(),
            timed_out,
        }
    }

    /// Kills the process now and returns what it printed.
    pub fn kill(mut self) -> Output {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.finish(Duration::from_secs(5))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `nsenter --net=/run/netns/NS -- ARGV...`: runs in the namespace's
/// network stack but keeps our mounts (bpffs pins stay visible).
pub fn ns_command(ns: &str, argv: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .args(argv);
    cmd
}

/// A command outside any namespace wrapper (configuration only, e.g. `ip -n`).
pub fn host_command(argv: &[&str]) -> Command {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// Runs `cmd` to completion, killing it after `timeout`.
pub fn run(cmd: Command, timeout: Duration) -> Output {
    let desc = describe(&cmd);
    match Spawned::start(cmd) {
        Ok(s) => s.finish(timeout),
        Err(e) => Output {
            cmd: desc,
            status: None,
            stdout: String::new(),
            stderr: format!("{e:#}"),
            timed_out: false,
        },
    }
}

/// The string `v[key]` (panics, showing `v`, if there is none).
#[track_caller]
pub fn str_field(v: &serde_json::Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in {v}"))
        .to_string()
}

/// A field of `/proc/net/snmp` in namespace `ns`, e.g. ("Udp", "RcvbufErrors").
pub fn snmp(ns: &str, proto: &str, field: &str) -> Result<u64> {
    let out = exec(ns, &["cat", "/proc/net/snmp"]).check()?;
    let prefix = format!("{proto}:");
    let mut rows = out.stdout.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        bail!("no {proto} lines in /proc/net/snmp:\n{}", out.stdout);
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| anyhow!("no {proto} {field} in /proc/net/snmp:\n{}", out.stdout))
}

/// Runs `argv` inside namespace `ns` (time limit [`EXEC_TIMEOUT`]).
pub fn exec(ns: &str, argv: &[&str]) -> Output {
    run(ns_command(ns, argv), EXEC_TIMEOUT)
}

/// Runs `argv` inside namespace `ns` with a time limit.
pub fn exec_timeout(ns: &str, argv: &[&str], timeout: Duration) -> Output {
    run(ns_command(ns, argv), timeout)
}

/// Starts `argv` in the background inside namespace `ns`; killed on drop.
pub fn spawn(ns: &str, argv: &[&str]) -> Result<Spawned> {
    Spawned::start(ns_command(ns, argv))
}

/// Runs a configuration command (e.g. `ip -n NS ...`) and fails with its output unless it succeeds.
fn config(argv: &[&str]) -> Result<()> {
    run(host_command(argv), EXEC_TIMEOUT).check().map(drop)
}

/// Runs `argv` in `ns` and fails with its output unless it succeeds.
fn config_in(ns: &str, argv: &[&str]) -> Result<()> {
    exec(ns, argv).check().map(drop)
}

// ---------------------------------------------------------------- topology

static COUNTER: AtomicU32 = AtomicU32::new(0);

// Sync so that a `Lab` can be shared by the threads of one test.
type Cleanup = Box<dyn FnOnce() + Send + Sync>;

/// Namespaces, veths and directories of one test; removed on drop.
pub struct Topology {
    prefix: String,
    namespaces: Vec<String>,
    links: Vec<(String, String)>,
    dirs: Vec<PathBuf>,
    cleanups: Vec<Cleanup>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    /// An empty topology with a fresh unique prefix (`fipt<pid>x<counter>`).
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Topology {
            prefix: format!("fipt{}x{n}", std::process::id()),
            namespaces: Vec::new(),
            links: Vec::new(),
            dirs: Vec::new(),
            cleanups: Vec::new(),
        }
    }

    /// Unique to this topology; usable for directory names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates namespace `<prefix>-<role>` with `lo` up and IPv6 disabled
    /// (keeps the captures to the IPv4 traffic under test), and returns its name.
    pub fn namespace(&mut self, role: &str) -> Result<String> {
        let name = format!("{}-{role}", self.prefix);
        config(&["ip", "netns", "add", &name])?;
        self.namespaces.push(name.clone());
        config(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        for key in ["all", "default"] {
            config_in(
                &name,
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
                ],
            )?;
        }
        Ok(name)
    }

    /// Creates a veth pair with one end `a_if` in `a_ns` and the other
    /// `b_if` in `b_ns`, both created in place (never in the root namespace).
    pub fn veth(&mut self, a_ns: &str, a_if: &str, b_ns: &str, b_if: &str) -> Result<()> {
        for n in [a_if, b_if] {
            if n.is_empty() || n.len() > 15 {
                bail!("interface name {n:?} must have 1 to 15 bytes");
            }
        }
        config(&[
            "ip", "-n", a_ns, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns",
            b_ns,
        ])?;
        self.links.push((a_ns.to_string(), a_if.to_string()));
        Ok(())
    }

    /// Creates (and removes on drop) a fresh directory `<tmp>/<prefix>-<name>`.
    pub fn temp_dir(&mut self, name: &str) -> Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("{}-{name}", self.prefix));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// Registers `f` to run on drop, before namespaces go (last registered runs first).
    pub fn on_drop(&mut self, f: impl FnOnce() + Send + Sync + 'static) {
        self.cleanups.push(Box::new(f));
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Cleanups must not panic here (a panic while unwinding aborts).
        while let Some(f) = self.cleanups.pop() {
            let _ = catch_unwind(AssertUnwindSafe(f));
        }
        for (ns, ifname) in self.links.drain(..).rev() {
            let _ = run(
                host_command(&["ip", "-n", &ns, "link", "del", &ifname]),
                EXEC_TIMEOUT,
            );
        }
        for ns in self.namespaces.drain(..).rev() {
            // Anything still running in our namespace was started by this test.
            let pids = run(host_command(&["ip", "netns", "pids", &ns]), EXEC_TIMEOUT);
            for pid in pids
                .stdout
                .split_whitespace()
                .filter_map(|p| p.parse::<libc::pid_t>().ok())
            {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let out = run(host_command(&["ip", "netns", "del", &ns]), EXEC_TIMEOUT);
            if !out.success() {
                eprintln!("netns cleanup: {out}");
            }
        }
        for dir in self.dirs.drain(..) {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

// ---------------------------------------------------------------- the floatip lab

pub use floatip::dataplane::Mode;

/// The attach mode of tests that run in one mode: `FLOATIP_TEST_MODE`
/// (xdp, xdp-generic, tc), default xdp.
pub fn mode_from_env() -> Mode {
    match std::env::var("FLOATIP_TEST_MODE").as_deref() {
        Ok("xdp-generic") => Mode::XdpGeneric,
        Ok("tc") => Mode::Tc,
        Ok("xdp") | Err(_) => Mode::Xdp,
        Ok(other) => panic!("FLOATIP_TEST_MODE={other:?}: expected xdp, xdp-generic or tc"),
    }
}

/// Where the `floatip` binary is: `$FLOATIP_BIN`, else `floatip` next to
/// the test executable's `deps/` directory (target/<profile>/floatip).
pub fn floatip_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOATIP_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("target/release"));
    dir.join("floatip")
}

/// The standard floatip topology (see the module docs), attached or not.
pub struct Lab {
    pub mode: Mode,
    pub ext: String,
    pub rtr: String,
    pub gw: String,
    pub sw: String,
    pub inst1: String,
    pub inst2: String,
    /// `--bpffs` directory, unique to this lab, under /sys/fs/bpf.
    pub bpffs: PathBuf,
    /// `--state` database path, in a directory of [`Lab::workdir`] that
    /// floatip creates.
    pub state: PathBuf,
    /// Scratch directory (state database, captures), removed on drop.
    pub workdir: PathBuf,
    pub floatip_bin: PathBuf,
    pub netprobe_bin: PathBuf,
    /// XDP_PASS holders on the gateway NICs' peers (xdp mode); dropped
    /// (killed) before the namespaces go.
    _xdp_pass: Vec<Spawned>,
    topo: Topology,
}

impl Lab {
    /// Builds the topology for `mode` (not yet attached). On error,
    /// everything created so far is removed again.
    pub fn build(mode: Mode, floatip_bin: &Path, netprobe_bin: &Path) -> Result<Lab> {
        for (what, p) in [("floatip", floatip_bin), ("netprobe", netprobe_bin)] {
            if !p.is_file() {
                bail!(
                    "{what} binary not found at {} (build it: `cargo build --release -p floatip-userspace`, \
                     or set FLOATIP_BIN)",
                    p.display()
                );
            }
        }
        let mut topo = Topology::new();
        let workdir = topo.temp_dir("work")?;
        let bpffs = PathBuf::from("/sys/fs/bpf").join(topo.prefix());

        let ext = topo.namespace("ext")?;
        let rtr = topo.namespace("rtr")?;
        let gw = topo.namespace("gw")?;
        let sw = topo.namespace("sw")?;
        let inst1 = topo.namespace("inst1")?;
        let inst2 = topo.namespace("inst2")?;

        // No ICMP error rate limiting: several scenarios depend on single
        // errors (traceroute's time-exceeded, port unreachables), and an
        // earlier failing scenario (e.g. host unreachables for lost packets)
        // must not use up the per-destination budget of a later one.
        for ns in [&ext, &rtr, &gw, &sw, &inst1, &inst2] {
            config_in(ns, &["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])?;
        }

        // Remove the pins even if the test fails: detach while the gateway
        // namespace (and its NICs) still exist, then delete what is left.
        {
            let (gw, bpffs, floatip, state) = (
                gw.clone(),
                bpffs.clone(),
                floatip_bin.to_path_buf(),
                workdir.join("state").join("state.db"),
            );
            topo.on_drop(move || {
                if bpffs.exists() {
                    let out = exec(
                        &gw,
                        &[
                            &floatip.to_string_lossy(),
                            "--bpffs",
                            &bpffs.to_string_lossy(),
                            "--state",
                            &state.to_string_lossy(),
                            "detach",
                        ],
                    );
                    if !out.success() {
                        eprintln!("lab cleanup: {out}");
                    }
                    let _ = fs::remove_dir_all(&bpffs);
                }
            });
        }

        // (namespace, interface) of every veth end, for the offload settings.
        let ends: [(&str, &str); 10] = [
            (&ext, "eth0"),
            (&rtr, "r-ext"),
            (&rtr, "r-gw"),
            (&gw, "gw-ext"),
            (&gw, "gw-int"),
            (&sw, "s-gw"),
            (&sw, "s-i1"),
            (&sw, "s-i2"),
            (&inst1, "eth0"),
            (&inst2, "eth0"),
        ];
        topo.veth(&ext, "eth0", &rtr, "r-ext")?;
        topo.veth(&rtr, "r-gw", &gw, "gw-ext")?;
        topo.veth(&gw, "gw-int", &sw, "s-gw")?;
        topo.veth(&inst1, "eth0", &sw, "s-i1")?;
        topo.veth(&inst2, "eth0", &sw, "s-i2")?;

        // The tenant L2: a bridge (no STP, so ports forward at once).
        config(&[
            "ip",
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
        ])?;
        for port in ["s-gw", "s-i1", "s-i2"] {
            config(&["ip", "-n", &sw, "link", "set", port, "master", "br0"])?;
        }

        // rp_filter off on the router and gateway. Gateway: the programs hand
        // translated packets to the kernel when the next hop's neighbour is
        // not known yet (and the kernel also sees hairpinned packets), so
        // packets arrive on gw-int with a floating source, whose reverse route
        // points out of gw-ext: strict reverse-path filtering would drop them.
        // Router: the anti-spoofing check sends from ext a packet whose source
        // is a tenant address the router has no route back to; it must reach
        // the gateway to be dropped (and counted) there.
        for ns in [&rtr, &gw] {
            config_in(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            for key in ["all", "default"] {
                config_in(
                    ns,
                    &["sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")],
                )?;
            }
        }
        for (ns, ifname) in [
            (&rtr, "r-ext"),
            (&rtr, "r-gw"),
            (&gw, "gw-ext"),
            (&gw, "gw-int"),
        ] {
            config_in(
                ns,
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.conf.{ifname}.rp_filter=0"),
                ],
            )?;
        }

        // Offloads.
        match mode {
            Mode::Xdp | Mode::XdpGeneric => {
                // Hosts in namespaces leave TCP/UDP checksums for the "NIC" to
                // finish (CHECKSUM_PARTIAL skbs cross veths unfinished). A real
                // wire always carries complete checksums, and XDP sees only bytes:
                // a frame that leaves a veth through XDP loses the skb's partial
                // checksum state and arrives with a half-done checksum. So every
                // veth end outside the gateway computes checksums in software
                // (`tx off`, which also turns TSO off), like a real peer.
                for (ns, ifname) in [
                    (&ext, "eth0"),
                    (&rtr, "r-ext"),
                    (&rtr, "r-gw"),
                    (&inst1, "eth0"),
                    (&inst2, "eth0"),
                ] {
                    config_in(ns, &["ethtool", "-K", ifname, "tx", "off"])?;
                }
                // GRO on the gateway's NICs, as real NICs have it by default
                // (xdp-generic runs after GRO). Deliberately NOT on every veth
                // end: GRO merges segments into one CHECKSUM_PARTIAL skb whose
                // TCP checksum field holds only the pseudo-header seed, and that
                // state survives the next veth hop. With GRO in the bridge or
                // router namespaces, the gateway's XDP received seeds instead
                // of checksums (something no wire carries), updated them as
                // checksums and the receivers got corrupt segments; receivers'
                // captures also show every merged packet as "incorrect".
                for ifname in ["gw-ext", "gw-int"] {
                    config_in(&gw, &["ethtool", "-K", ifname, "gro", "on"])?;
                }
                // NAPI for the peers of the gateway's NICs (native XDP only; the
                // generic redirect/TX path transmits skbs normally): see
                // `Lab::xdp_pass`, started once the links are up.
            }
            Mode::Tc => {
                // Hosts keep tx checksum offload: packets reach the gateway with
                // CHECKSUM_PARTIAL, i.e. the L4 checksum field holds only the
                // pseudo-header seed. The gateway's NICs have tx checksumming
                // off, so the kernel completes those checksums in software on the
                // way out of the gateway. If the TC programs' skb helpers did not
                // update the pseudo-header seed for the rewritten address, the
                // completed checksum is wrong, and the receiver's capture shows it.
                for ifname in ["gw-ext", "gw-int"] {
                    config_in(&gw, &["ethtool", "-K", ifname, "tx", "off"])?;
                }
            }
        }

        // Addresses and routes.
        let addr = |ns: &str, ifname: &str, cidr: &str| {
            config(&["ip", "-n", ns, "addr", "add", cidr, "dev", ifname])
        };
        addr(&ext, "eth0", "198.51.100.2/24")?;
        addr(&rtr, "r-ext", "198.51.100.1/24")?;
        addr(&rtr, "r-gw", "203.0.113.1/24")?;
        addr(&gw, "gw-ext", "203.0.113.2/24")?;
        addr(&gw, "gw-int", "10.0.0.1/24")?;
        addr(&inst1, "eth0", "10.0.0.11/24")?;
        addr(&inst2, "eth0", "10.0.0.12/24")?;
        for (ns, ifname) in ends {
            config(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
        }
        config(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        let default_via =
            |ns: &str, via: &str| config(&["ip", "-n", ns, "route", "add", "default", "via", via]);
        default_via(&ext, RTR_EXT_IP)?;
        default_via(&gw, RTR_GW_IP)?;
        default_via(&inst1, GW_INT_IP)?;
        default_via(&inst2, GW_INT_IP)?;

        let mut xdp_pass = Vec::new();
        if mode == Mode::Xdp {
            xdp_pass.push(Self::xdp_pass(&rtr, "r-gw", netprobe_bin)?);
            xdp_pass.push(Self::xdp_pass(&sw, "s-gw", netprobe_bin)?);
        }

        Ok(Lab {
            mode,
            ext,
            rtr,
            gw,
            sw,
            inst1,
            inst2,
            // A directory floatip creates itself (0700), as /var/lib/floatip.
            state: workdir.join("state").join("state.db"),
            bpffs,
            workdir,
            floatip_bin: floatip_bin.to_path_buf(),
            netprobe_bin: netprobe_bin.to_path_buf(),
            _xdp_pass: xdp_pass,
            topo,
        })
    }

    /// Attaches a trivial XDP_PASS program to `ifname` in `ns` (held by a
    /// `netprobe xdp-pass` process for the lab's lifetime).
    ///
    /// In native XDP mode the gateway's programs send frames into veth
    /// peers two ways, and both need the peer to poll with NAPI:
    /// redirected frames (`ndo_xdp_xmit`) are dropped unless the peer has
    /// NAPI (an XDP program or GRO), and XDP_TX'd frames (the ARP replies
    /// for floating IPs) are queued on the peer but only flushed to it when
    /// the peer has an XDP program: with GRO alone they sit in the ring
    /// and the router never learns the floating IP's MAC. A real NIC has
    /// neither limitation; an XDP_PASS program on the peer removes both
    /// without changing what the peer's stack receives.
    fn xdp_pass(ns: &str, ifname: &str, netprobe_bin: &Path) -> Result<Spawned> {
        let bin = netprobe_bin.to_string_lossy();
        let mut s = spawn(ns, &[&bin, "xdp-pass", ifname])?;
        s.wait_for("attached", Duration::from_secs(10))?;
        Ok(s)
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// `floatip --bpffs DIR --state DB ARGS...` inside the gateway namespace.
    pub fn floatip(&self, args: &[&str]) -> Output {
        self.floatip_via(&[], args)
    }

    /// `WRAPPER... floatip --bpffs DIR --state DB ARGS...` inside the gateway
    /// namespace, e.g. with `setpriv --reuid=...` as the wrapper.
    pub fn floatip_via(&self, wrapper: &[&str], args: &[&str]) -> Output {
        let argv = self.floatip_argv(wrapper, args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        exec(&self.gw, &argv)
    }

    /// Starts `floatip ARGS...` in the gateway namespace without waiting.
    pub fn floatip_spawn(&self, args: &[&str]) -> Result<Spawned> {
        self.floatip_spawn_via(&[], args)
    }

    /// [`Self::floatip_spawn`] under `WRAPPER...` (e.g. `env VAR=VALUE`).
    pub fn floatip_spawn_via(&self, wrapper: &[&str], args: &[&str]) -> Result<Spawned> {
        let argv = self.floatip_argv(wrapper, args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        spawn(&self.gw, &argv)
    }

    /// `WRAPPER... floatip --bpffs DIR --state DB ARGS...` as an argument vector.
    fn floatip_argv(&self, wrapper: &[&str], args: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = wrapper.iter().map(|w| w.to_string()).collect();
        argv.extend(
            [
                self.floatip_bin.as_path(),
                Path::new("--bpffs"),
                &self.bpffs,
                Path::new("--state"),
                &self.state,
            ]
            .iter()
            .map(|p| p.to_string_lossy().into_owned()),
        );
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    /// `floatip ARGS`, which must succeed (panics with its output otherwise).
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.floatip(args);
        assert!(out.success(), "floatip {} failed:\n{out}", args.join(" "));
        out
    }

    /// `floatip ARGS -f json`, which must succeed, parsed.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut argv = args.to_vec();
        argv.extend(["-f", "json"]);
        let out = self.ok(&argv);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("floatip {} printed no JSON ({e}):\n{out}", argv.join(" ")))
    }

    /// `floatip pool create NAME --range RANGE --external gw-ext`, which must succeed.
    #[track_caller]
    pub fn pool_create(&self, name: &str, range: &str) -> Output {
        self.ok(&[
            "pool",
            "create",
            name,
            "--range",
            range,
            "--external",
            "gw-ext",
        ])
    }

    /// The (floating, fixed) pairs in the maps (`nat list`), sorted.
    #[track_caller]
    pub fn nat_pairs(&self) -> Vec<(String, String)> {
        let v = self.json(&["nat", "list"]);
        let mut pairs: Vec<(String, String)> = v
            .as_array()
            .unwrap_or_else(|| panic!("nat list -f json is not an array: {v}"))
            .iter()
            .map(|p| (str_field(p, "floating"), str_field(p, "fixed")))
            .collect();
        pairs.sort();
        pairs
    }

    /// Creates a veth pair as [`Topology::veth`] does (removed on drop).
    pub fn veth(&mut self, a_ns: &str, a_if: &str, b_ns: &str, b_if: &str) -> Result<()> {
        self.topo.veth(a_ns, a_if, b_ns, b_if)
    }

    /// Every namespace of the lab with its role (ext, rtr, gw, sw, inst1, inst2).
    pub fn namespaces(&self) -> [(&'static str, &str); 6] {
        [
            ("ext", &self.ext),
            ("rtr", &self.rtr),
            ("gw", &self.gw),
            ("sw", &self.sw),
            ("inst1", &self.inst1),
            ("inst2", &self.inst2),
        ]
    }

    /// Every drop and error counter of every interface of the lab, as
    /// "ROLE IFACE COUNTER" -> value: the kernel's interface statistics
    /// (`ip -s link`) and the driver's (`ethtool -S`: veth queue drops, XDP
    /// transmit errors). Two readings' difference says where packets died.
    pub fn drop_counters(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut out = std::collections::BTreeMap::new();
        for (role, ns) in self.namespaces() {
            let links = run(
                host_command(&["ip", "-n", ns, "-s", "-j", "link", "show"]),
                EXEC_TIMEOUT,
            )
            .check()?;
            let links: serde_json::Value = serde_json::from_str(&links.stdout)?;
            for link in links.as_array().into_iter().flatten() {
                let Some(ifname) = link["ifname"].as_str() else {
                    continue;
                };
                for dir in ["rx", "tx"] {
                    let stats = &link["stats64"][dir];
                    for (k, v) in stats.as_object().into_iter().flatten() {
                        if (k.contains("drop") || k.contains("err") || k.contains("over"))
                            && let Some(v) = v.as_u64()
                        {
                            out.insert(format!("{role} {ifname} {dir}_{k}"), v);
                        }
                    }
                }
                if ifname == "lo" || ifname == "br0" {
                    continue;
                }
                let stats = exec(ns, &["ethtool", "-S", ifname]);
                for line in stats.stdout.lines() {
                    if let Some((k, v)) = line.trim().split_once(':')
                        && (k.contains("drop") || k.contains("err"))
                        && let Ok(v) = v.trim().parse::<u64>()
                    {
                        out.insert(format!("{role} {ifname} {}", k.trim()), v);
                    }
                }
            }
        }
        Ok(out)
    }

    /// `attach --external gw-ext --internal gw-int [--internal EXTRA...] --mode MODE`.
    pub fn attach_args(&self, extra_internal: &[&'static str]) -> Vec<&'static str> {
        let mut v = vec!["attach", "--external", "gw-ext", "--internal", "gw-int"];
        for nic in extra_internal {
            v.extend(["--internal", nic]);
        }
        v.extend(["--mode", self.mode.as_str()]);
        v
    }

    /// `floatip attach` on the lab's NICs in its mode.
    pub fn attach(&self) -> Output {
        self.floatip(&self.attach_args(&[]))
    }

    pub fn detach(&self) -> Output {
        self.floatip(&["detach"])
    }

    /// `floatip status -f json`, parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = self.floatip(&["status", "-f", "json"]).check()?;
        serde_json::from_str(&out.stdout).with_context(|| format!("status is not JSON:\n{out}"))
    }

    /// One of `floatip status`'s per-outcome counters.
    pub fn counter(&self, name: &str) -> Result<u64> {
        let st = self.status()?;
        st["counters"][name]
            .as_u64()
            .ok_or_else(|| anyhow!("status has no counter {name:?}: {st}"))
    }

    /// Runs netprobe in `ns` and waits for it.
    pub fn netprobe(&self, ns: &str, args: &[&str]) -> Output {
        let bin = self.netprobe_bin.to_string_lossy();
        let mut argv: Vec<&str> = vec![&bin];
        argv.extend_from_slice(args);
        exec(ns, &argv)
    }

    /// Starts a netprobe server in `ns` and waits until it is bound.
    pub fn server(&self, ns: &str, args: &[&str]) -> Result<Spawned> {
        let bin = self.netprobe_bin.to_string_lossy();
        let mut argv: Vec<&str> = vec![&bin];
        argv.extend_from_slice(args);
        let mut s = spawn(ns, &argv)?;
        s.wait_for("listening", Duration::from_secs(10))?;
        Ok(s)
    }

    /// Starts netprobe in `ns` in the background with its watchdog set to
    /// `watchdog` (streams outlive the default 30 s); killed on drop.
    pub fn netprobe_background(
        &self,
        ns: &str,
        args: &[&str],
        watchdog: Duration,
    ) -> Result<Spawned> {
        let bin = self.netprobe_bin.to_string_lossy();
        let mut argv: Vec<&str> = vec![&bin];
        argv.extend_from_slice(args);
        let mut cmd = ns_command(ns, &argv);
        cmd.env("NETPROBE_TIMEOUT", watchdog.as_secs().to_string());
        Spawned::start(cmd)
    }

    /// The MAC address of `ifname` in `ns`, read through netlink (`ip -j link`).
    pub fn mac(&self, ns: &str, ifname: &str) -> Result<String> {
        let out = run(
            host_command(&["ip", "-n", ns, "-j", "link", "show", "dev", ifname]),
            EXEC_TIMEOUT,
        )
        .check()?;
        let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
        v[0]["address"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no address in {}", out.stdout))
    }

    /// Starts `tcpdump` on `ifname` in `ns`, capturing received packets only
    /// (`-Q in`: a host's own outgoing packets may carry unfinished checksums
    /// under tx offload, which says nothing about the data plane).
    pub fn capture(&self, ns: &str, ifname: &str, name: &str) -> Result<Capture> {
        let file = self.workdir.join(format!("{name}.pcap"));
        let f = file.to_string_lossy();
        // --immediate-mode: libpcap otherwise hands packets over in blocks
        // (up to 1 s late), and a block not yet handed over when tcpdump
        // stops is lost: a short capture would come back empty.
        let mut s = spawn(
            ns,
            &[
                "tcpdump",
                "-Z",
                "root",
                "-n",
                "-U",
                "--immediate-mode",
                "-Q",
                "in",
                "-i",
                ifname,
                "-w",
                &f,
            ],
        )?;
        s.wait_for("listening on", Duration::from_secs(10))?;
        Ok(Capture {
            ns: ns.to_string(),
            file,
            proc: s,
        })
    }
}

/// A running `tcpdump -w`.
pub struct Capture {
    ns: String,
    file: PathBuf,
    proc: Spawned,
}

impl Capture {
    /// Stops the capture (SIGINT, so tcpdump flushes) and returns
    /// the text of `tcpdump -r FILE -vvv -n`, which decodes every packet
    /// and states checksum verdicts ("incorrect", "bad cksum", "wrong ...").
    pub fn stop(mut self) -> Result<String> {
        // Give in-flight packets a moment to be written.
        thread::sleep(Duration::from_millis(200));
        self.proc.signal(libc::SIGINT);
        let out = self.proc.finish(Duration::from_secs(10));
        if out.timed_out {
            bail!("tcpdump did not stop on SIGINT:\n{out}");
        }
        let f = self.file.to_string_lossy();
        let read = exec(&self.ns, &["tcpdump", "-r", &f, "-vvv", "-n"]).check()?;
        Ok(read.stdout)
    }

    pub fn file(&self) -> &Path {
        &self.file
    }
}
