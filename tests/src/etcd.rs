//! Real etcd members (Debian's `/usr/bin/etcd`, installed by `cargo xtask setup`) for the
//! store tests: one member, or a 3-member cluster for the quorum tests, on 127.0.0.1 in a
//! temporary directory. Dropping the [`Cluster`] kills every member and removes the directory,
//! also when the test panics; the members also get SIGKILL if the thread that started them
//! dies without unwinding (`PR_SET_PDEATHSIG`).
//!
//! Ports: tests run in parallel (and beside other test binaries), so a port that was free
//! when chosen can be taken before etcd binds it. Ports come from the kernel (bind to port 0)
//! and the whole cluster is started again on fresh ports whenever a member exits or the
//! cluster does not become healthy in time (EADDRINUSE being the usual cause), up to
//! [`START_ATTEMPTS`] times.

use std::{
    fs,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub const ETCD: &str = "/usr/bin/etcd";
const START_ATTEMPTS: usize = 5;
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

/// One member's ports and process.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A running etcd cluster; see the module.
pub struct Cluster {
    dir: PathBuf,
    members: Vec<Member>,
    token: String,
    /// The network namespace the members run in (`None`: the test's own).
    netns: Option<String>,
    /// The address the members listen on (127.0.0.1 unless a namespace's other address).
    host: String,
    /// Why the starts before the one that worked failed.
    pub failed_starts: Vec<String>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// One member.
    pub fn single() -> Result<Self> {
        Self::start(1, None, None)
    }

    /// Three members (quorum 2).
    pub fn three() -> Result<Self> {
        Self::start(3, None, None)
    }

    /// `size` members on the loopback of network namespace `netns` (a lab's gateway, where
    /// the `floatip` under test runs).
    pub fn in_netns(size: usize, netns: &str) -> Result<Self> {
        Self::start_on(size, Some(netns.to_owned()), None, "127.0.0.1")
    }

    /// `size` members in network namespace `netns` listening on its address `host` (reachable
    /// from other namespaces, as a gateway group's store must be).
    pub fn in_netns_on(size: usize, netns: &str, host: &str) -> Result<Self> {
        Self::start_on(size, Some(netns.to_owned()), None, host)
    }

    /// One member whose first start is given client port `port` (the harness's own test: a
    /// port taken by someone else must cost a retry, not the test).
    pub fn single_trying_port(port: u16) -> Result<Self> {
        Self::start(1, None, Some(port))
    }

    fn start(size: usize, netns: Option<String>, first_port: Option<u16>) -> Result<Self> {
        Self::start_on(size, netns, first_port, "127.0.0.1")
    }

    fn start_on(
        size: usize,
        netns: Option<String>,
        first_port: Option<u16>,
        host: &str,
    ) -> Result<Self> {
        if !Path::new(ETCD).exists() {
            bail!("{ETCD} not found: `cargo xtask setup` installs Debian's etcd-server");
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("floatip-etcd-{}-{n}", std::process::id()));
        let mut failed = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir)?;
            let mut members = Vec::new();
            for i in 0..size {
                let forced = first_port.filter(|_| attempt == 0 && i == 0);
                members.push(Member {
                    name: format!("m{i}"),
                    client: forced.map_or_else(free_port, Ok)?,
                    peer: free_port()?,
                    child: None,
                });
            }
            let mut cluster = Self {
                dir: dir.clone(),
                members,
                token: format!("floatip-test-{}-{n}-{attempt}", std::process::id()),
                netns: netns.clone(),
                host: host.to_owned(),
                failed_starts: Vec::new(),
            };
            match cluster.boot() {
                Ok(()) => {
                    cluster.failed_starts = failed;
                    return Ok(cluster);
                }
                // Dropping `cluster` kills what started and removes the directory.
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        bail!(
            "etcd cluster of {size} did not start in {START_ATTEMPTS} attempts: {}",
            failed.join("; ")
        )
    }

    fn boot(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            self.spawn(i, "new")?;
        }
        self.wait_healthy(&(0..self.members.len()).collect::<Vec<_>>())
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, self.host, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<()> {
        let initial = self.initial_cluster();
        let m = &self.members[i];
        let data = self.dir.join(&m.name);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))?;
        let client = format!("http://{}:{}", self.host, m.client);
        let peer = format!("http://{}:{}", self.host, m.peer);
        let mut cmd = match &self.netns {
            None => Command::new(ETCD),
            Some(ns) => {
                // `ip netns exec` execs etcd itself: the child is etcd, signals reach it.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, ETCD]);
                c
            }
        };
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            // Fast elections, so quorum tests settle in well under a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl only, async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {ETCD}"))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until each of `members` answers `/health` with a leader; fails early if one of
    /// them exits (a port taken, say), with the tail of its log.
    fn wait_healthy(&mut self, members: &[usize]) -> Result<()> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        let mut pending: Vec<usize> = members.to_vec();
        while !pending.is_empty() {
            for &i in &pending {
                let m = &mut self.members[i];
                if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    m.child = None;
                    let name = m.name.clone();
                    bail!("etcd member {name} exited ({status}): {}", self.log_tail(i));
                }
            }
            let ports: Vec<u16> = pending.iter().map(|&i| self.members[i].client).collect();
            let host = self.host.clone();
            let check = move || -> Vec<bool> {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_millis(500))
                    .build();
                ports
                    .iter()
                    .map(|port| {
                        agent
                            .get(&format!("http://{host}:{port}/health"))
                            .call()
                            .ok()
                            .and_then(|r| r.into_string().ok())
                            .is_some_and(|b| b.contains("\"health\":\"true\""))
                    })
                    .collect()
            };
            let healthy = match &self.netns {
                None => check(),
                Some(ns) => crate::agent::in_netns(ns, check),
            };
            let mut healthy = healthy.into_iter();
            pending.retain(|_| !healthy.next().unwrap_or(false));
            if Instant::now() > deadline {
                bail!(
                    "etcd members {pending:?} not healthy within {HEALTHY_WITHIN:?}: {}",
                    self.log_tail(pending[0])
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn log_tail(&self, i: usize) -> String {
        let text = fs::read_to_string(self.dir.join(format!("{}.log", self.members[i].name)))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// Where the members keep their data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The running members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// The members' `HOST:PORT` client addresses.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}:{}", self.host, m.client))
            .collect()
    }

    /// `etcd://...` of every member, as `--store` takes it.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// Kills member `i` (SIGKILL) and waits for it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data and ports, waiting until the members that are
    /// running, `i` included, are healthy (the port is retried: another process may have
    /// taken it meanwhile, then this fails after a few tries).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&j| j == i || self.members[j].child.is_some())
            .collect();
        let mut last = None;
        for _ in 0..3 {
            self.spawn(i, "existing")?;
            match self.wait_healthy(&running) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.kill(i);
                    last = Some(e);
                }
            }
        }
        Err(last.expect("tried"))
    }

    /// The running member that is the leader, if one is (asked through etcd's HTTP gateway:
    /// `/v3/maintenance/status` names the leader and the member answering). Test's namespace
    /// only.
    pub fn leader(&self) -> Option<usize> {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(500))
            .build();
        (0..self.members.len()).find(|&i| {
            if self.members[i].child.is_none() {
                return false;
            }
            let url = format!(
                "http://127.0.0.1:{}/v3/maintenance/status",
                self.members[i].client
            );
            let Ok(reply) = agent.post(&url).send_string("{}") else {
                return false;
            };
            let Ok(v) = reply.into_json::<serde_json::Value>() else {
                return false;
            };
            v["leader"].is_string() && v["leader"] == v["header"]["member_id"]
        })
    }

    /// A fresh `etcd://` address with nothing listening (a port just released by the kernel).
    pub fn unused_url() -> Result<String> {
        Ok(format!("etcd://127.0.0.1:{}", free_port()?))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
