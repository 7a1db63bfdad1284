//! The real `floatip` binary and agent on the etcd store (`--store etcd://...`, or
//! `FLOATIP_STORE`), against real etcd members of `tests::etcd`:
//!
//! - `store_urls_and_etcd_down`: a bad `--store` is one line and exit 2; etcd unreachable is
//!   one line and exit 5 within seconds; pool create / concurrent `ip create` processes (each
//!   address handed out once) / quota through the CLI; a member killed: writes fail in one line
//!   and change nothing; restarted: they work again.
//! - `associate_through_the_cli_on_etcd`: a lab (network namespaces, the data plane attached)
//!   whose gateway runs etcd on its loopback: attach, allocate, associate (the maps get the
//!   pair), the second floating IP for the same fixed IP refused, etcd down: associate fails
//!   in one line and neither etcd nor the maps change.
//! - `api_without_quorum_is_503`: the agent on a 3-member cluster: one member down changes
//!   nothing; two down: a write is answered 503 with a Neutron error body and the state is
//!   unchanged; with them back, writes work again.
//!
//! Needs root and the built `floatip` (see `control_plane.rs`); fails if etcd is not
//! installed (`cargo xtask setup` installs it).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    agent::{self, Client, in_netns},
    etcd::Cluster,
    netns::{self, INST1_IP, INST2_IP, Lab, Output},
};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");

/// `floatip --store STORE ARGS` in the test's namespace, with a bpffs directory that holds
/// no data plane.
fn floatip(store: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(netns::floatip_binary());
    cmd.args([
        "--bpffs",
        "/nonexistent/floatip-store-test",
        "--store",
        store,
    ])
    .args(args);
    netns::run(cmd, Duration::from_secs(60))
}

#[track_caller]
fn ok(store: &str, args: &[&str]) -> Output {
    let out = floatip(store, args);
    assert!(out.success(), "{out}");
    out
}

#[track_caller]
fn json(store: &str, args: &[&str]) -> Value {
    let mut argv = args.to_vec();
    argv.extend(["-f", "json"]);
    let out = ok(store, &argv);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Fails with exit `code` and exactly one line on stderr that contains `needle`.
#[track_caller]
fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.and_then(|s| s.code()), Some(code), "{out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {out}");
    assert!(lines[0].starts_with("floatip: "), "{out}");
    assert!(lines[0].contains(needle), "{needle:?} expected: {out}");
}

fn addresses(v: &Value) -> Vec<String> {
    let mut a: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["floating_ip_address"].as_str().unwrap().to_owned())
        .collect();
    a.sort();
    a
}

/// The harness itself: a client port already taken makes the member fail to start, and the
/// cluster comes up on fresh ports instead; members and their directory are gone after a
/// test that panicked.
#[test]
fn etcd_harness_retries_taken_ports_and_cleans_up_after_a_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cluster = Cluster::single_trying_port(port).unwrap_or_else(|e| panic!("{e:#}"));
    assert_ne!(cluster.endpoints(), [format!("127.0.0.1:{port}")]);
    assert_eq!(
        cluster.failed_starts.len(),
        1,
        "{:?}",
        cluster.failed_starts
    );
    assert!(
        cluster.failed_starts[0].contains("address already in use"),
        "{:?}",
        cluster.failed_starts
    );
    drop(cluster);
    let left = std::thread::spawn(|| {
        let cluster = Cluster::single().unwrap();
        let found = (cluster.dir().to_owned(), cluster.pids());
        std::panic::panic_any(found);
    })
    .join()
    .expect_err("the thread panics");
    let (dir, pids) = *left.downcast::<(std::path::PathBuf, Vec<u32>)>().unwrap();
    assert_eq!(pids.len(), 1);
    assert!(!dir.exists(), "{} left behind", dir.display());
    for pid in pids {
        // Reaped by the drop: no such process any more.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "etcd {pid} still runs"
        );
    }
}

#[test]
fn store_urls_and_etcd_down() {
    netns::require_root();
    for (bad, needle) in [
        ("zk://127.0.0.1:2181", "unknown store scheme \"zk\""),
        ("etcd://127.0.0.1", "is not HOST:PORT"),
        ("etcd://127.0.0.1:2379,:5", "is not HOST:PORT"),
        ("etcd://127.0.0.1:99999", "is not HOST:PORT"),
    ] {
        let out = floatip(bad, &["pool", "list"]);
        assert_one_line_error(&out, 2, needle);
    }
    // Nothing listening: one line, exit 5 (unavailable), within the client's timeouts.
    let down = Cluster::unused_url().unwrap();
    let started = Instant::now();
    let out = floatip(
        &down,
        &[
            "pool",
            "create",
            "public",
            "--range",
            "203.0.113.10-203.0.113.17",
        ],
    );
    assert_one_line_error(&out, 5, "is unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let mut etcd = Cluster::single().unwrap_or_else(|e| panic!("{e:#}"));
    let url = etcd.url();
    ok(
        &url,
        &[
            "pool",
            "create",
            "public",
            "--range",
            "203.0.113.10-203.0.113.17",
        ],
    );
    ok(&url, &["quota", "set", "demo", "--floating-ips", "3"]);
    // 12 processes at once for 8 addresses: each handed out once, the rest refused.
    let children: Vec<_> = (0..12)
        .map(|i| {
            let project = if i < 4 { "demo" } else { "other" };
            let mut cmd = Command::new(netns::floatip_binary());
            cmd.args([
                "--bpffs",
                "/nonexistent/floatip-store-test",
                "--store",
                &url,
            ])
            .args(["ip", "create", "public", "--project", project, "-f", "json"]);
            std::thread::spawn(move || netns::run(cmd, Duration::from_secs(60)))
        })
        .collect();
    let outs: Vec<Output> = children.into_iter().map(|c| c.join().unwrap()).collect();
    let won: Vec<&Output> = outs.iter().filter(|o| o.success()).collect();
    assert_eq!(won.len(), 8, "{outs:#?}");
    for o in outs.iter().filter(|o| !o.success()) {
        assert_eq!(o.stderr.lines().count(), 1, "{o}");
        assert!(
            o.stderr.contains("no more floating IPs") || o.stderr.contains("at its quota"),
            "{o}"
        );
    }
    let listed = json(&url, &["ip", "list"]);
    let got = addresses(&listed);
    let want: Vec<String> = (10..=17).map(|i| format!("203.0.113.{i}")).collect();
    assert_eq!(got, want, "every address once");
    let demo = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["project"] == "demo")
        .count();
    assert!(demo <= 3, "quota of 3 exceeded: {listed}");

    // The member down: a write fails in one line and changes nothing.
    etcd.kill(0);
    let out = floatip(&url, &["ip", "delete", "203.0.113.10"]);
    assert_one_line_error(&out, 5, "is unavailable");
    etcd.restart(0).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(addresses(&json(&url, &["ip", "list"])), want);
    ok(&url, &["ip", "delete", "203.0.113.10"]);
    assert_eq!(addresses(&json(&url, &["ip", "list"])).len(), 7);
}

/// `floatip ARGS` in the lab's gateway with `FLOATIP_STORE=url`.
fn lab_floatip(lab: &Lab, url: &str, args: &[&str]) -> Output {
    lab.floatip_via(&["env", &format!("FLOATIP_STORE={url}")], args)
}

#[track_caller]
fn lab_ok(lab: &Lab, url: &str, args: &[&str]) -> Output {
    let out = lab_floatip(lab, url, args);
    assert!(out.success(), "{out}");
    out
}

/// A lab whose gateway runs an etcd cluster of `members` on its loopback, with pool `public`
/// in it and the data plane attached; and the cluster's `etcd://` URL.
fn etcd_lab(members: usize) -> (Lab, Cluster, String) {
    let lab = Lab::build(
        netns::mode_from_env(),
        &netns::floatip_binary(),
        Path::new(NETPROBE),
    )
    .unwrap_or_else(|e| panic!("cannot build the namespace topology: {e:#}"));
    let etcd = Cluster::in_netns(members, &lab.gw).unwrap_or_else(|e| panic!("{e:#}"));
    let url = etcd.url();
    let range = "203.0.113.10-203.0.113.20";
    lab_ok(
        &lab,
        &url,
        &[
            "pool",
            "create",
            "public",
            "--range",
            range,
            "--external",
            "gw-ext",
        ],
    );
    lab_ok(&lab, &url, &lab.attach_args(&[]));
    (lab, etcd, url)
}

#[test]
fn associate_through_the_cli_on_etcd() {
    netns::require_root();
    let _serial = netns::serialize();
    let (lab, mut etcd, url) = etcd_lab(1);
    lab_ok(&lab, &url, &["ip", "create", "public", "--project", "demo"]);
    lab_ok(&lab, &url, &["ip", "create", "public", "--project", "demo"]);
    lab_ok(
        &lab,
        &url,
        &[
            "ip",
            "associate",
            "203.0.113.10",
            INST1_IP,
            "--instance",
            "web1",
        ],
    );
    let pair = ("203.0.113.10".to_owned(), INST1_IP.to_owned());
    assert_eq!(lab.nat_pairs(), std::slice::from_ref(&pair));
    // One fixed IP, one floating IP.
    let out = lab_floatip(&lab, &url, &["ip", "associate", "203.0.113.11", INST1_IP]);
    assert_one_line_error(&out, 4, "already has floating IP 203.0.113.10");
    assert_eq!(lab.nat_pairs(), std::slice::from_ref(&pair));
    // The SQLite database of --state was never used for any of it.
    let sqlite = lab.floatip(&["ip", "list", "-f", "json"]);
    assert!(
        !sqlite.success() || sqlite.stdout.trim() == "[]",
        "the default store holds addresses: {sqlite}"
    );
    // etcd down: one line, nothing changes, in the maps either.
    etcd.kill(0);
    let out = lab_floatip(&lab, &url, &["ip", "associate", "203.0.113.11", INST2_IP]);
    assert_one_line_error(&out, 5, "is unavailable");
    assert_eq!(lab.nat_pairs(), std::slice::from_ref(&pair));
    etcd.restart(0).unwrap_or_else(|e| panic!("{e:#}"));
    let ips = lab_ok(&lab, &url, &["ip", "list", "-f", "json"]);
    let ips: Value = serde_json::from_str(&ips.stdout).unwrap();
    let fixed: Vec<&Value> = ips
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["fixed_ip_address"])
        .collect();
    assert_eq!(fixed, [&json!(INST1_IP), &Value::Null], "{ips}");
    lab_ok(&lab, &url, &["ip", "associate", "203.0.113.11", INST2_IP]);
    let mut pairs = lab.nat_pairs();
    pairs.sort();
    assert_eq!(
        pairs,
        [pair, ("203.0.113.11".to_owned(), INST2_IP.to_owned())]
    );
    lab_ok(&lab, &url, &["detach"]);
}

#[test]
fn api_without_quorum_is_503() {
    netns::require_root();
    let _serial = netns::serialize();
    let (lab, mut etcd, url) = etcd_lab(3);
    let admin = ("admin", "admin-password-1");
    agent::user_create_with(&lab, &["--store", &url], admin.0, "admin", "admin", admin.1)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let env = format!("FLOATIP_STORE={url}");
    let _agent = agent::start_with_env(&lab, &[&env], &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let create_ip = |client: &Client, network: &str| {
        client.call(
            "POST",
            "/v2.0/floatingips",
            admin,
            Some(&json!({"floatingip": {"floating_network_id": network}})),
        )
    };
    let count = |client: &Client| {
        let r = client.call("GET", "/v2.0/floatingips", admin, None);
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["floatingips"].as_array().unwrap().len()
    };
    let gw = lab.gw.clone();
    let network = in_netns(&gw, || Client::new().network_id(admin, "public"));
    let r = in_netns(&gw, || create_ip(&Client::new(), &network));
    assert_eq!(r.status, 201, "{}", r.text);
    // One of three down: quorum holds, writes work.
    etcd.kill(2);
    let r = in_netns(&gw, || create_ip(&Client::new(), &network));
    assert_eq!(r.status, 201, "{}", r.text);
    // Two of three down: 503 with an error body, and nothing changed.
    etcd.kill(1);
    let started = Instant::now();
    let r = in_netns(&gw, || create_ip(&Client::new(), &network));
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.error_type(), Some("ServiceUnavailable"), "{}", r.text);
    assert!(
        r.body["NeutronError"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unavailable")),
        "{}",
        r.text
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    etcd.restart(1).unwrap_or_else(|e| panic!("{e:#}"));
    etcd.restart(2).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        in_netns(&gw, || count(&Client::new())),
        2,
        "the refused write left nothing"
    );
    let r = in_netns(&gw, || create_ip(&Client::new(), &network));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(in_netns(&gw, || count(&Client::new())), 3);
}
