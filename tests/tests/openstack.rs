//! The unmodified `openstack` CLI (python-openstackclient, from the project's virtualenv)
//! against `floatip agent` in the lab's gateway namespace, with real traffic as the judge:
//! ping and a TCP stream from the external host reach the instance behind the floating IP,
//! follow it when it moves to another port, and stop when it is taken off. Plus the refusals:
//! another project's address (not found), a member creating a network (403), a wrong
//! password (401). Then the same life cycle through openstacksdk
//! (`tests/python/sdk_floating_ip.py`), judged the same way.
//!
//! Needs root, a built `floatip` and `cargo xtask setup` (the virtualenv); run with
//! `cargo xtask test -p tests -- --test openstack`.

use std::{path::Path, time::Duration};

use serde_json::Value;
use tests::{
    agent::{self, LISTEN},
    netns::{self, EXT_IP, INST1_IP, INST2_IP, Lab, Output, exec},
};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");
const FIP: &str = "203.0.113.15";

struct Os<'a> {
    lab: &'a Lab,
    bin: String,
    clouds: String,
}

impl Os<'_> {
    /// `openstack --os-cloud USER ARGS` in the gateway namespace.
    fn run(&self, user: &str, args: &[&str]) -> Output {
        let env = format!("OS_CLIENT_CONFIG_FILE={}", self.clouds);
        let mut argv = vec!["env", &env, &self.bin, "--os-cloud", user];
        argv.extend_from_slice(args);
        exec(&self.lab.gw, &argv)
    }

    #[track_caller]
    fn ok(&self, user: &str, args: &[&str]) -> Output {
        let out = self.run(user, args);
        assert!(out.success(), "openstack {} failed:\n{out}", args.join(" "));
        out
    }

    #[track_caller]
    fn json(&self, user: &str, args: &[&str]) -> Value {
        let mut argv = args.to_vec();
        argv.extend(["-f", "json"]);
        let out = self.ok(user, &argv);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
    }

    /// Must fail, saying `needle`.
    #[track_caller]
    fn fails(&self, user: &str, args: &[&str], needle: &str) {
        let out = self.run(user, args);
        assert!(
            !out.success() && out.all().contains(needle),
            "openstack {} should fail with {needle:?}:\n{out}",
            args.join(" ")
        );
    }
}

/// Pings `fip` from the external host: `count` echoes, each waited for `wait` seconds.
fn ping(lab: &Lab, fip: &str, count: &str, wait: &str) -> Output {
    exec(
        &lab.ext,
        &["ping", "-n", "-c", count, "-i", "0.2", "-W", wait, fip],
    )
}

#[track_caller]
fn ping_ok(lab: &Lab, fip: &str) {
    let out = ping(lab, fip, "3", "2");
    assert!(
        out.success() && out.stdout.contains(" 0% packet loss"),
        "ping {fip} lost replies:\n{out}"
    );
}

#[track_caller]
fn ping_fails(lab: &Lab, fip: &str) {
    let out = ping(lab, fip, "2", "1");
    assert!(
        !out.success() && out.stdout.contains("100% packet loss"),
        "traffic to {fip} must stop:\n{out}"
    );
}

/// A TCP echo from the external host to the floating IP, served in `server_ns`: the stream
/// reaching that instance is what proves where the floating IP points.
#[track_caller]
fn tcp_reaches(lab: &Lab, fip: &str, server_ns: &str, port: u16) {
    let p = port.to_string();
    let server = lab.server(server_ns, &["tcp-serve", &p]).unwrap();
    let client = lab.netprobe(&lab.ext, &["tcp-send", fip, &p, "262144", &p]);
    let server = server.finish(Duration::from_secs(15));
    assert!(
        client.success(),
        "TCP to {fip}:{port} failed:\n{client}\nserver:\n{server}"
    );
    assert!(
        server.stdout.contains("bytes=262144 ")
            && server.stdout.contains(&format!("peer={EXT_IP}:")),
        "the instance did not get the stream from {EXT_IP}:\n{server}"
    );
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Tags as the CLI drives Neutron's tag extension: `create --tag`, `set --tag/--no-tag`,
/// `unset --tag/--all-tag` (each a PUT of the whole set), the four list filters, `show`.
/// Leaves the floating IPs as it found them.
fn tags(os: &Os) {
    let third = os.json(
        "alice",
        &[
            "floating", "ip", "create", "--tag", "web", "--tag", "blue", "public",
        ],
    );
    let third = field(&third, "floating_ip_address").to_owned();
    let tags_of = |ip: &str| os.json("alice", &["floating", "ip", "show", ip])["tags"].clone();
    assert_eq!(tags_of(&third), serde_json::json!(["blue", "web"]));
    os.ok("alice", &["floating", "ip", "set", "--tag", "db", FIP]);
    os.ok("alice", &["floating", "ip", "set", "--tag", "web", FIP]);
    assert_eq!(tags_of(FIP), serde_json::json!(["db", "web"]));
    // 203.0.113.10: none; FIP: db, web; third: blue, web.
    let listed = |filter: &[&str]| {
        let args = [&["floating", "ip", "list"][..], filter].concat();
        let mut found: Vec<String> = os
            .json("alice", &args)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| field(r, "Floating IP Address").to_owned())
            .collect();
        found.sort(); // as text: .10, .11 (third), .15
        found
    };
    let (none, fip, third) = ("203.0.113.10", FIP, third.as_str());
    assert_eq!(listed(&["--tags", "web,blue"]), [third]);
    assert_eq!(listed(&["--any-tags", "db,blue"]), [third, fip]);
    assert_eq!(listed(&["--not-tags", "web,blue"]), [none, fip]);
    assert_eq!(listed(&["--not-any-tags", "db"]), [none, third]);
    assert_eq!(
        listed(&[
            "--tags",
            "web",
            "--any-tags",
            "db,blue",
            "--not-tags",
            "blue,db",
            "--not-any-tags",
            "blue",
        ]),
        [fip]
    );
    let long = os.json(
        "alice",
        &["floating", "ip", "list", "--long", "--tags", "db"],
    );
    assert_eq!(long[0]["Tags"], serde_json::json!(["db", "web"]), "{long}");

    os.ok(
        "alice",
        &["floating", "ip", "set", "--no-tag", "--tag", "new", third],
    );
    assert_eq!(tags_of(third), serde_json::json!(["new"]));
    os.ok("alice", &["floating", "ip", "unset", "--tag", "db", FIP]);
    assert_eq!(tags_of(FIP), serde_json::json!(["web"]));
    os.ok("alice", &["floating", "ip", "unset", "--all-tag", FIP]);
    assert_eq!(tags_of(FIP), serde_json::json!([]));
    // Refused in one line, with the server's reason; nothing changed.
    os.fails(
        "alice",
        &["floating", "ip", "set", "--tag", "a,b", third],
        "must not contain ','",
    );
    os.fails(
        "bob",
        &["floating", "ip", "set", "--tag", "mine", third],
        "No FloatingIP found",
    );
    assert_eq!(tags_of(third), serde_json::json!(["new"]));
    os.ok("alice", &["floating", "ip", "delete", third]);
}

#[test]
fn openstack_cli() {
    netns::require_root();
    let bin = agent::openstack_bin();
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo xtask setup`",
        bin.display()
    );
    let _serial = netns::serialize();
    let lab = Lab::build(
        netns::mode_from_env(),
        &netns::floatip_binary(),
        Path::new(NETPROBE),
    )
    .unwrap_or_else(|e| panic!("cannot build the lab: {e:#}"));
    let out = lab.attach();
    assert!(out.success(), "attach: {out}");
    lab.pool_create("public", "203.0.113.10-203.0.113.20");
    let users = [
        ("root", "admin-pw"),
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
    ];
    for ((name, pw), (project, role)) in
        users
            .iter()
            .zip([("admin", "admin"), ("demo", "member"), ("other", "member")])
    {
        agent::user_create(&lab, name, project, role, pw).unwrap();
    }
    let clouds = agent::clouds_yaml(&lab.workdir, &users).unwrap();
    let _agent = agent::start(&lab, &[]).unwrap();
    let os = Os {
        lab: &lab,
        bin: bin.to_string_lossy().into_owned(),
        clouds: clouds.to_string_lossy().into_owned(),
    };

    // Networks and subnets.
    let ext = os.json("alice", &["network", "list", "--external"]);
    assert_eq!(ext.as_array().unwrap().len(), 1, "{ext}");
    assert_eq!(field(&ext[0], "Name"), "public");
    let subnets = os.json("alice", &["subnet", "list"]);
    let cidrs: Vec<&str> = subnets
        .as_array()
        .unwrap()
        .iter()
        .map(|s| field(s, "Subnet"))
        .collect();
    assert!(cidrs.contains(&"10.0.0.0/24"), "{subnets}");

    // Ports for the two instances.
    for (name, ip) in [("web1", INST1_IP), ("web2", INST2_IP)] {
        let fixed = format!("ip-address={ip}");
        let port = os.json(
            "alice",
            &[
                "port",
                "create",
                "--network",
                "gw-int",
                "--fixed-ip",
                &fixed,
                name,
            ],
        );
        assert!(port["fixed_ips"].to_string().contains(ip), "{port}");
    }

    // Allocate: the lowest free address, and a chosen one.
    let any = os.json("alice", &["floating", "ip", "create", "public"]);
    assert_eq!(field(&any, "floating_ip_address"), "203.0.113.10");
    let chosen = os.json(
        "alice",
        &[
            "floating",
            "ip",
            "create",
            "--floating-ip-address",
            FIP,
            "public",
        ],
    );
    assert_eq!(field(&chosen, "floating_ip_address"), FIP);
    assert_eq!(field(&chosen, "status"), "DOWN");
    let list = os.json("alice", &["floating", "ip", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let shown = os.json("alice", &["floating", "ip", "show", FIP]);
    assert_eq!(field(&shown, "id"), field(&chosen, "id"));
    tags(&os);

    // Associate with web1: ping and TCP reach inst1.
    os.ok("alice", &["floating", "ip", "set", "--port", "web1", FIP]);
    let shown = os.json("alice", &["floating", "ip", "show", FIP]);
    assert_eq!(
        (field(&shown, "status"), field(&shown, "fixed_ip_address")),
        ("ACTIVE", INST1_IP)
    );
    ping_ok(&lab, FIP);
    tcp_reaches(&lab, FIP, &lab.inst1, 6001);
    let active = os.json("alice", &["floating", "ip", "list", "--status", "ACTIVE"]);
    assert_eq!(active.as_array().unwrap().len(), 1, "{active}");
    assert_eq!(field(&active[0], "Floating IP Address"), FIP);
    let on_web1 = os.json("alice", &["floating", "ip", "list", "--port", "web1"]);
    assert_eq!(field(&on_web1[0], "Fixed IP Address"), INST1_IP);
    let by_fixed = os.json(
        "alice",
        &["floating", "ip", "list", "--fixed-ip-address", INST1_IP],
    );
    assert_eq!(by_fixed.as_array().unwrap().len(), 1, "{by_fixed}");
    let on_public = os.json("alice", &["floating", "ip", "list", "--network", "public"]);
    assert_eq!(on_public.as_array().unwrap().len(), 2, "{on_public}");

    // Move to web2: the next stream reaches inst2.
    os.ok("alice", &["floating", "ip", "set", "--port", "web2", FIP]);
    let shown = os.json("alice", &["floating", "ip", "show", FIP]);
    assert_eq!(field(&shown, "fixed_ip_address"), INST2_IP);
    tcp_reaches(&lab, FIP, &lab.inst2, 6002);
    ping_ok(&lab, FIP);

    // Another project cannot see or touch it; a member cannot create networks; a wrong
    // password is refused.
    os.fails(
        "bob",
        &["floating", "ip", "show", FIP],
        "No FloatingIP found",
    );
    os.fails(
        "bob",
        &["floating", "ip", "set", "--port", "web1", FIP],
        "No FloatingIP found",
    );
    os.fails(
        "bob",
        &["floating", "ip", "delete", FIP],
        "No FloatingIP found",
    );
    os.fails("alice", &["network", "create", "mine"], "admin action");
    let out = exec(
        &lab.gw,
        &[
            &os.bin,
            "--os-auth-type",
            "http_basic",
            "--os-endpoint",
            &format!("http://{LISTEN}"),
            "--os-username",
            "alice",
            "--os-password",
            "wrong",
            "network",
            "list",
        ],
    );
    assert!(
        !out.success() && out.all().contains("401"),
        "a wrong password must be refused:\n{out}"
    );
    assert_eq!(
        field(
            &os.json("alice", &["floating", "ip", "show", FIP]),
            "fixed_ip_address"
        ),
        INST2_IP,
        "refusals changed nothing"
    );

    // Take it off: traffic stops.
    os.ok("alice", &["floating", "ip", "unset", "--port", FIP]);
    let shown = os.json("alice", &["floating", "ip", "show", FIP]);
    assert_eq!(field(&shown, "status"), "DOWN");
    ping_fails(&lab, FIP);
    assert!(lab.nat_pairs().is_empty());

    // Quotas, then release.
    os.ok("root", &["quota", "set", "--floating-ips", "2", "demo"]);
    let quota = os.json("alice", &["quota", "show", "--network", "demo"]);
    let limit = quota
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["Resource"] == "floating_ips"))
        .map(|r| r["Limit"].clone());
    assert_eq!(limit, Some(serde_json::json!(2)), "{quota}");
    os.fails("alice", &["floating", "ip", "create", "public"], "quota");
    os.fails(
        "alice",
        &["quota", "set", "--floating-ips", "9", "demo"],
        "admin action",
    );
    os.ok("alice", &["floating", "ip", "delete", FIP]);
    os.ok("alice", &["floating", "ip", "delete", "203.0.113.10"]);
    assert_eq!(
        os.json("alice", &["floating", "ip", "list"]),
        Value::Array(Vec::new())
    );

    sdk(&os);
}

/// The same life cycle through openstacksdk (`tests/python/sdk_floating_ip.py`, one step per
/// run), with the traffic and the maps as the judge between steps.
fn sdk(os: &Os) {
    let lab = os.lab;
    let python = Path::new(&os.bin).with_file_name("python3");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/sdk_floating_ip.py");
    let step = |args: &[&str]| -> Value {
        let env = format!("OS_CLIENT_CONFIG_FILE={}", os.clouds);
        let python = python.to_string_lossy();
        let mut argv = vec!["env", &env, &*python, script, "alice"];
        argv.extend_from_slice(args);
        let out = exec(&lab.gw, &argv);
        assert!(out.success(), "sdk {} failed:\n{out}", args.join(" "));
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
    };
    let ip = step(&["create", "public"]);
    let fip = field(&ip, "floating_ip_address").to_owned();
    assert_eq!(field(&ip, "status"), "DOWN", "{ip}");
    ping_fails(lab, &fip);

    let ip = step(&["set-port", &fip, "web1"]);
    assert_eq!(field(&ip, "fixed_ip_address"), INST1_IP, "{ip}");
    assert_eq!(lab.nat_pairs(), [(fip.clone(), INST1_IP.to_owned())]);
    assert_eq!(field(&step(&["show", &fip]), "status"), "ACTIVE");
    ping_ok(lab, &fip);
    tcp_reaches(lab, &fip, &lab.inst1, 6011);

    let ip = step(&["set-port", &fip, "web2"]);
    assert_eq!(field(&ip, "fixed_ip_address"), INST2_IP, "{ip}");
    assert_eq!(lab.nat_pairs(), [(fip.clone(), INST2_IP.to_owned())]);
    tcp_reaches(lab, &fip, &lab.inst2, 6012);

    let ip = step(&["unset", &fip]);
    assert!(ip["port_id"].is_null(), "{ip}");
    assert!(lab.nat_pairs().is_empty());
    ping_fails(lab, &fip);

    step(&["delete", &fip]);
    assert_eq!(
        os.json("alice", &["floating", "ip", "list"]),
        Value::Array(Vec::new())
    );
}
