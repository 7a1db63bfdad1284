//! A gateway group in namespaces: a 3-member etcd cluster, N gateways on one external and one
//! tenant segment, a router and two instances.
//!
//! ```text
//!  rtr 198.51.100.1 ──┐                     ┌── inst1 10.0.0.11 (default via 10.0.0.1)
//!   (203.0.113.0/24   │  sw: br-ext  br-int │
//!    on-link)         │                     ├── inst2 10.0.0.12
//!      gw1 ext 198.51.100.11 ─┤     ├─ int 10.0.0.2   gw1 mgmt 172.16.255.11 ─┐
//!      gw2 ext 198.51.100.12 ─┤     ├─ int 10.0.0.3   gw2 mgmt 172.16.255.12 ─┼─ mgmt: br0
//!      gw3 ext 198.51.100.13 ─┘     └─ int 10.0.0.4   gw3 mgmt 172.16.255.13 ─┘  172.16.255.1
//!                                                                         etcd m0 m1 m2
//! ```
//! The tenant gateway address 10.0.0.1 is held by whichever gateway owns pool `public`
//! (`--tenant-gateway`); the router asks ARP for floating IPs on its on-link route, and only
//! the owner answers. Everything is removed on drop ([`Topology`]), also when a test fails.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    agent::{Client, in_netns},
    etcd::Cluster,
    netns::{Mode, Output, Spawned, Topology, exec, ns_command, spawn},
};

pub const POOL: &str = "public";
pub const POOL_RANGE: &str = "203.0.113.0/24";
pub const TENANT_GATEWAY: &str = "10.0.0.1/24";
pub const INST: [&str; 2] = ["10.0.0.11", "10.0.0.12"];
pub const ADMIN: (&str, &str) = ("admin", "admin-secret");
const ETCD_HOST: &str = "172.16.255.1";
/// Lease of the tests' gateways: the etcd members run with a 500 ms election timeout, so
/// etcd keeps a TTL of 1 s.
pub const LEASE_TTL: &str = "1";

fn sh(argv: &[&str]) -> Result<()> {
    let out = crate::netns::run(crate::netns::host_command(argv), Duration::from_secs(20));
    if !out.success() {
        bail!("{out}");
    }
    Ok(())
}

fn in_ns(ns: &str, argv: &[&str]) -> Result<()> {
    exec(ns, argv).check().map(drop)
}

/// One gateway of the lab.
pub struct Gateway {
    pub name: String,
    pub ns: String,
    pub bpffs: PathBuf,
    pub agent: Option<Spawned>,
}

pub struct GatewayLab {
    pub mode: Mode,
    pub rtr: String,
    pub sw: String,
    pub mgmt: String,
    pub inst: Vec<String>,
    pub gateways: Vec<Gateway>,
    pub etcd: Cluster,
    pub floatip_bin: PathBuf,
    pub netprobe_bin: PathBuf,
    /// XDP_PASS holders on the bridge side of the gateways' NICs (NAPI for XDP_TX and
    /// redirects into veths, see `netns::Lab::xdp_pass`).
    _holders: Vec<Spawned>,
    // Last: the namespaces go after everything that runs in them.
    topo: Topology,
}

impl GatewayLab {
    /// Builds the segments, `count` gateways (not started) and the etcd cluster, and creates
    /// the admin user and the pool.
    pub fn build(count: usize, mode: Mode) -> Result<Self> {
        Self::build_with(count, mode, &crate::netns::floatip_binary())
    }

    /// [`Self::build`] with the `floatip` binary at `floatip_bin` (`netprobe` beside it).
    pub fn build_with(count: usize, mode: Mode, floatip_bin: &std::path::Path) -> Result<Self> {
        let floatip_bin = floatip_bin.to_path_buf();
        let netprobe_bin = floatip_bin.with_file_name("netprobe");
        let mut topo = Topology::new();
        let rtr = topo.namespace("rtr")?;
        let sw = topo.namespace("sw")?;
        let mgmt = topo.namespace("mgmt")?;
        let inst: Vec<String> = (1..=2)
            .map(|i| topo.namespace(&format!("inst{i}")))
            .collect::<Result<_>>()?;
        let gw_ns: Vec<String> = (1..=count)
            .map(|i| topo.namespace(&format!("gw{i}")))
            .collect::<Result<_>>()?;
        for (ns, br) in [(&sw, "br-ext"), (&sw, "br-int"), (&mgmt, "br0")] {
            sh(&[
                "ip",
                "-n",
                ns,
                "link",
                "add",
                br,
                "type",
                "bridge",
                "stp_state",
                "0",
            ])?;
            sh(&["ip", "-n", ns, "link", "set", br, "up"])?;
        }
        let port =
            |topo: &mut Topology, ns: &str, ifname: &str, bns: &str, port: &str, br: &str| {
                topo.veth(ns, ifname, bns, port)?;
                sh(&["ip", "-n", bns, "link", "set", port, "master", br, "up"])?;
                sh(&["ip", "-n", ns, "link", "set", ifname, "up"])
            };
        port(&mut topo, &rtr, "eth0", &sw, "s-rtr", "br-ext")?;
        for (i, ns) in inst.iter().enumerate() {
            port(
                &mut topo,
                ns,
                "eth0",
                &sw,
                &format!("s-i{}", i + 1),
                "br-int",
            )?;
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", INST[i]),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", ns, "route", "add", "default", "via", "10.0.0.1"])?;
        }
        sh(&[
            "ip",
            "-n",
            &rtr,
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "eth0",
        ])?;
        sh(&["ip", "-n", &rtr, "route", "add", POOL_RANGE, "dev", "eth0"])?;
        sh(&[
            "ip",
            "-n",
            &mgmt,
            "addr",
            "add",
            &format!("{ETCD_HOST}/24"),
            "dev",
            "br0",
        ])?;
        // Hosts finish their checksums in software, as on a wire (see `netns::Lab`).
        for ns in inst.iter().chain([&rtr]) {
            in_ns(ns, &["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        let mut holders = Vec::new();
        let mut gateways = Vec::new();
        for (i, ns) in gw_ns.iter().enumerate() {
            let n = i + 1;
            port(&mut topo, ns, "ext", &sw, &format!("s-g{n}e"), "br-ext")?;
            port(&mut topo, ns, "int", &sw, &format!("s-g{n}i"), "br-int")?;
            port(&mut topo, ns, "mgmt", &mgmt, &format!("m-g{n}"), "br0")?;
            let addr = |ifname: &str, cidr: String| {
                sh(&["ip", "-n", ns, "addr", "add", &cidr, "dev", ifname])
            };
            addr("ext", format!("198.51.100.{}/24", 10 + n))?;
            addr("int", format!("10.0.0.{}/24", 1 + n))?;
            addr("mgmt", format!("172.16.255.{}/24", 10 + n))?;
            sh(&[
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                "198.51.100.1",
            ])?;
            in_ns(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            for key in ["all", "default", "ext", "int"] {
                in_ns(
                    ns,
                    &["sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")],
                )?;
            }
            if mode != Mode::Tc {
                for ifname in ["ext", "int"] {
                    in_ns(ns, &["ethtool", "-K", ifname, "gro", "on"])?;
                }
            } else {
                for ifname in ["ext", "int"] {
                    in_ns(ns, &["ethtool", "-K", ifname, "tx", "off"])?;
                }
            }
            if mode == Mode::Xdp {
                for p in [format!("s-g{n}e"), format!("s-g{n}i")] {
                    let mut h = spawn(&sw, &[&netprobe_bin.to_string_lossy(), "xdp-pass", &p])?;
                    h.wait_for("attached", Duration::from_secs(10))?;
                    holders.push(h);
                }
            }
            let bpffs = PathBuf::from("/sys/fs/bpf").join(format!("{}-gw{n}", topo.prefix()));
            {
                let (ns, bpffs, bin) = (ns.clone(), bpffs.clone(), floatip_bin.clone());
                topo.on_drop(move || {
                    if bpffs.exists() {
                        let _ = exec(
                            &ns,
                            &[
                                &bin.to_string_lossy(),
                                "--bpffs",
                                &bpffs.to_string_lossy(),
                                "detach",
                            ],
                        );
                        let _ = std::fs::remove_dir_all(&bpffs);
                    }
                });
            }
            gateways.push(Gateway {
                name: format!("gw{n}"),
                ns: ns.clone(),
                bpffs,
                agent: None,
            });
        }
        let etcd = Cluster::in_netns_on(3, &mgmt, ETCD_HOST)?;
        let lab = Self {
            mode,
            rtr,
            sw,
            mgmt,
            inst,
            gateways,
            etcd,
            floatip_bin,
            netprobe_bin,
            _holders: holders,
            topo,
        };
        lab.user_create(0, ADMIN.0, "admin", "admin", ADMIN.1)?;
        lab.floatip(
            0,
            &[
                "pool",
                "create",
                POOL,
                "--range",
                POOL_RANGE,
                "--external",
                "ext",
            ],
        )
        .check()?;
        Ok(lab)
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    pub fn store(&self) -> String {
        self.etcd.url()
    }

    fn base_args(&self, g: usize) -> Vec<String> {
        vec![
            self.floatip_bin.to_string_lossy().into_owned(),
            "--store".into(),
            self.store(),
            "--bpffs".into(),
            self.gateways[g].bpffs.to_string_lossy().into_owned(),
        ]
    }

    /// `floatip --store ETCD --bpffs GW ARGS` in gateway `g`'s namespace.
    pub fn floatip(&self, g: usize, args: &[&str]) -> Output {
        let mut argv = self.base_args(g);
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        crate::netns::exec_timeout(&self.gateways[g].ns, &argv, Duration::from_secs(60))
    }

    pub fn user_create(
        &self,
        g: usize,
        name: &str,
        project: &str,
        role: &str,
        pw: &str,
    ) -> Result<()> {
        use std::io::Write;
        let mut argv = self.base_args(g);
        argv.extend(
            ["user", "create", name, "--project", project, "--role", role].map(String::from),
        );
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut child = ns_command(&self.gateways[g].ns, &argv)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(format!("{pw}\n").as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("user create: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Starts gateway `g`'s agent (attaching its NICs) and waits until it serves.
    pub fn start(&mut self, g: usize) -> Result<()> {
        self.start_with(g, &[])
    }

    pub fn start_with(&mut self, g: usize, extra: &[&str]) -> Result<()> {
        let mut argv = self.base_args(g);
        let name = self.gateways[g].name.clone();
        argv.extend(
            [
                "agent",
                "--gateway",
                &name,
                "--external",
                "ext",
                "--internal",
                "int",
                "--mode",
                self.mode.as_str(),
                "--listen",
                crate::agent::LISTEN,
                "--lease-ttl",
                LEASE_TTL,
                "--tenant-gateway",
                &format!("{POOL}={TENANT_GATEWAY}@int"),
            ]
            .map(String::from),
        );
        argv.extend(extra.iter().map(|a| (*a).to_owned()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut agent = Spawned::start(ns_command(&self.gateways[g].ns, &argv))?;
        agent
            .wait_for("joined", Duration::from_secs(60))
            .with_context(|| format!("{name}'s agent did not join"))?;
        self.gateways[g].agent = Some(agent);
        Ok(())
    }

    /// SIGKILLs gateway `g`'s agent; its programs stay attached.
    pub fn kill(&mut self, g: usize) -> Option<Output> {
        self.gateways[g].agent.take().map(Spawned::kill)
    }

    /// Takes gateway `g`'s NICs down or up.
    pub fn nics(&self, g: usize, up: bool) -> Result<()> {
        for ifname in ["ext", "int"] {
            sh(&[
                "ip",
                "-n",
                &self.gateways[g].ns,
                "link",
                "set",
                ifname,
                if up { "up" } else { "down" },
            ])?;
        }
        Ok(())
    }

    /// The pairs in gateway `g`'s maps (read from its pins, no process).
    pub fn pairs(&self, g: usize) -> Result<Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr)>> {
        Ok(
            floatip::dataplane::Dataplane::open(&self.gateways[g].bpffs)?
                .nat_list()?
                .into_iter()
                .map(|p| (p.floating, p.fixed))
                .collect(),
        )
    }

    /// Whether gateway `g`'s maps map `floating` to `fixed`.
    pub fn has_pair(
        &self,
        g: usize,
        floating: std::net::Ipv4Addr,
        fixed: std::net::Ipv4Addr,
    ) -> bool {
        floatip::dataplane::Dataplane::open(&self.gateways[g].bpffs)
            .and_then(|d| d.fixed_of(floating))
            .is_ok_and(|f| f == Some(fixed))
    }

    /// `GET /v2.0/floatip/gateways` through gateway `g`'s API.
    pub fn group(&self, g: usize) -> Result<Value> {
        let r = self.api(g, "GET", "/v2.0/floatip/gateways", None)?;
        if r.0 != 200 {
            bail!("GET /v2.0/floatip/gateways: {} {}", r.0, r.1);
        }
        Ok(r.1)
    }

    /// The gateway owning `pool` now, as gateway `g`'s API says.
    pub fn owner(&self, g: usize, pool: &str) -> Result<Option<String>> {
        let v = self.group(g)?;
        Ok(v["gateways"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|gw| {
                gw["alive"] == true
                    && gw["pools"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|x| x == pool))
            })
            .and_then(|gw| gw["name"].as_str().map(str::to_owned)))
    }

    /// One API call as the admin through gateway `g`: (status, body).
    pub fn api(
        &self,
        g: usize,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let (method, path) = (method.to_owned(), path.to_owned());
        in_netns(&self.gateways[g].ns, move || {
            let text = body.map(|b| b.to_string());
            Client::new()
                .raw(&method, &path, Some(ADMIN), text.as_deref())
                .map(|r| (r.status, r.body))
        })
    }

    /// Allocates `floating` from the pool and associates it with `fixed` through gateway
    /// `g`'s API (the Neutron calls: network id, POST with the port's fixed address); returns
    /// when the API has answered.
    pub fn associate(&self, g: usize, floating: &str, fixed: &str) -> Result<Value> {
        let (status, nets) = self.api(g, "GET", &format!("/v2.0/networks?name={POOL}"), None)?;
        let net = nets["networks"][0]["id"]
            .as_str()
            .with_context(|| format!("no network {POOL}: {status} {nets}"))?
            .to_owned();
        let (status, body) = self.api(
            g,
            "POST",
            "/v2.0/floatingips",
            Some(json!({"floatingip": {"floating_network_id": net, "floating_ip_address": floating}})),
        )?;
        if status != 201 {
            bail!("POST /v2.0/floatingips: {status} {body}");
        }
        let id = body["floatingip"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let port = self.port_for(g, fixed)?;
        let (status, body) = self.api(
            g,
            "PUT",
            &format!("/v2.0/floatingips/{id}"),
            Some(json!({"floatingip": {"port_id": port}})),
        )?;
        if status != 200 {
            bail!("PUT /v2.0/floatingips/{id}: {status} {body}");
        }
        Ok(body["floatingip"].clone())
    }

    /// A port with fixed address `fixed` on the internal network (made if needed).
    fn port_for(&self, g: usize, fixed: &str) -> Result<String> {
        let (_, nets) = self.api(g, "GET", "/v2.0/networks", None)?;
        let internal = nets["networks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["router:external"] == false)
            .and_then(|n| n["id"].as_str())
            .context("no internal network")?
            .to_owned();
        let (status, body) = self.api(
            g,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": internal, "fixed_ips": [{"ip_address": fixed}]}})),
        )?;
        if status != 201 {
            bail!("POST /v2.0/ports: {status} {body}");
        }
        Ok(body["port"]["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Waits until `f` holds, polling every 5 ms, for at most `limit`; how long it took.
    pub fn wait(limit: Duration, f: impl FnMut() -> bool) -> Option<Duration> {
        Self::wait_every(limit, Duration::from_millis(5), f)
    }

    /// [`Self::wait`], polling every `step`.
    pub fn wait_every(
        limit: Duration,
        step: Duration,
        mut f: impl FnMut() -> bool,
    ) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if f() {
                return Some(started.elapsed());
            }
            std::thread::sleep(step);
        }
        None
    }

    pub fn netprobe(&self) -> String {
        self.netprobe_bin.to_string_lossy().into_owned()
    }
}

/// A UDP stream from the router to a floating IP, received by a sink on an instance, logging
/// every datagram (sequence number, receive time) so the outage can be read off it.
pub struct Stream {
    sender: Spawned,
    sink: Spawned,
    log: PathBuf,
}

/// What a stream showed.
#[derive(Debug)]
pub struct StreamReport {
    pub sent: u64,
    pub received: u64,
    /// The longest time between two datagrams arriving (receiver's monotonic clock).
    pub longest_gap: Duration,
    pub sink: String,
}

impl Stream {
    /// `rate` datagrams/s from `lab.rtr` to `floating:port`, received on instance `inst`.
    pub fn start(
        lab: &GatewayLab,
        floating: &str,
        inst: usize,
        port: u16,
        rate: u32,
    ) -> Result<Self> {
        let log =
            std::env::temp_dir().join(format!("{}-stream-{port}.log", lab.topology().prefix()));
        let np = lab.netprobe();
        let port_s = port.to_string();
        let mut sink = spawn_long(
            &lab.inst[inst],
            &[&np, "udp-sink", &port_s, &log.to_string_lossy()],
        )?;
        sink.wait_for("listening", Duration::from_secs(10))?;
        let sender = spawn_long(
            &lab.rtr,
            &[&np, "udp-stream", floating, &port_s, &rate.to_string()],
        )?;
        Ok(Self { sender, sink, log })
    }

    /// Stops the sender and reads what arrived.
    pub fn finish(mut self) -> Result<StreamReport> {
        self.sender.signal(libc::SIGTERM);
        let sent = self.sender.finish(Duration::from_secs(10));
        let sink = self.sink.finish(Duration::from_secs(15));
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        // (seq, receive time): the gaps are read off the receiver's monotonic clock.
        let mut seqs: Vec<(u64, u64)> = text
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                Some((w.first()?.parse().ok()?, w.get(2)?.parse().ok()?))
            })
            .collect();
        seqs.sort_unstable_by_key(|s| s.1);
        let received = {
            let mut unique: Vec<u64> = seqs.iter().map(|s| s.0).collect();
            unique.sort_unstable();
            unique.dedup();
            unique.len() as u64
        };
        let longest_gap = seqs
            .windows(2)
            .map(|w| Duration::from_micros(w[1].1.saturating_sub(w[0].1)))
            .max()
            .unwrap_or_default();
        let sent_n = sent
            .stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix("sent="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(StreamReport {
            sent: sent_n,
            received,
            longest_gap,
            sink: sink.stdout,
        })
    }
}

/// A process that may run longer than netprobe's default watchdog.
pub fn spawn_long(ns: &str, argv: &[&str]) -> Result<Spawned> {
    let mut full = vec!["env", "NETPROBE_TIMEOUT=600"];
    full.extend_from_slice(argv);
    spawn(ns, &full)
}
