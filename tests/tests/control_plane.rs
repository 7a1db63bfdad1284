//! Control-plane tests: the real `floatip` binary, driven as an operator
//! would, on the namespace topology of `tests::netns` (external client,
//! router, gateway, two instances). State is read only through the CLI
//! (`-f json`).
//!
//! - `errors_leave_state_unchanged`: every error case of the control plane
//!   exits non-zero with exactly one line on stderr naming the problem, and
//!   leaves `pool list`, `ip list`, `nat list`, `quota show` and the maps'
//!   association count and generation exactly as they were.
//! - `concurrent_allocation_and_association`: 32 `ip create` processes at once
//!   against 20 free addresses; two processes associating one fixed IP at once.
//! - `restart_restores_associations`: detach, remove the pins (a reboot),
//!   attach: every association is back and traffic flows.
//! - `disassociate_cuts_open_connections`: after `ip disassociate`, an open TCP
//!   connection gets no further packets through; after re-association to the
//!   other instance, new connections reach that instance.
//!
//! Needs root and a built `floatip` (`cargo build --release -p
//! floatip-userspace`); run with
//! `cargo test --release -p tests --test control_plane -- --test-threads=1`.
//! `FLOATIP_BIN` overrides where the binary is looked up,
//! `FLOATIP_TEST_MODE` (xdp, xdp-generic, tc; default xdp) the attach mode.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tests::netns::{
    self, EXT_IP, FIP1, FIP2, INST1_IP, INST2_IP, Lab, Mode, Output, Spawned, str_field,
};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");
/// The demo binary carries the `trickle-send`/`trickle-recv` helpers.
const DEMO: &str = env!("CARGO_BIN_EXE_demo");

// ---------------------------------------------------------------- helpers

fn mode() -> Mode {
    netns::mode_from_env()
}

/// Builds the topology (not attached). Panics with the reason on failure;
/// everything built so far is removed again.
fn build_lab() -> Lab {
    Lab::build(mode(), &netns::floatip_binary(), Path::new(NETPROBE))
        .unwrap_or_else(|e| panic!("cannot build the namespace topology: {e:#}"))
}

/// Builds the topology and attaches floatip to the gateway.
fn attached_lab() -> Lab {
    let lab = build_lab();
    let out = lab.attach();
    assert!(out.success(), "floatip attach failed:\n{out}");
    lab
}

/// `ip list -f json` (with filters) as (floating, fixed or "", status), sorted.
#[track_caller]
fn ip_rows(lab: &Lab, filter: &[&str]) -> Vec<(String, String, String)> {
    let mut args = vec!["ip", "list"];
    args.extend_from_slice(filter);
    let v = lab.json(&args);
    let mut rows: Vec<_> = v
        .as_array()
        .unwrap_or_else(|| panic!("ip list -f json is not an array: {v}"))
        .iter()
        .map(|r| {
            (
                str_field(r, "floating_ip_address"),
                r["fixed_ip_address"].as_str().unwrap_or("").to_string(),
                str_field(r, "status"),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Everything the CLI shows of the state: database (pools, addresses,
/// quotas) and maps (associations, their count and the generation number).
/// Commands that fail (e.g. `nat list` while detached) contribute their
/// exit status and stderr, so the snapshot is comparable in every state.
fn snapshot(lab: &Lab) -> String {
    let mut s = String::new();
    for args in [
        &["pool", "list"][..],
        &["ip", "list"],
        &["quota", "show"],
        &["nat", "list"],
    ] {
        let mut argv = args.to_vec();
        argv.extend(["-f", "json"]);
        let out = lab.floatip(&argv);
        s += &format!("$ floatip {}\nsuccess={}\n", argv.join(" "), out.success());
        if out.success() {
            // nat list order is the map's; compare as a set.
            match serde_json::from_str::<Value>(&out.stdout) {
                Ok(Value::Array(mut items)) if args[0] == "nat" => {
                    items.sort_by_key(|v| v.to_string());
                    s += &serde_json::to_string_pretty(&items).unwrap_or_default();
                }
                _ => s += &out.stdout,
            }
        } else {
            s += &out.stderr;
        }
        s.push('\n');
    }
    // The maps' side: association count and generation (not the packet counters).
    let out = lab.floatip(&["status", "-f", "json"]);
    if out.success() {
        match serde_json::from_str::<Value>(&out.stdout) {
            Ok(v) => {
                s += &format!(
                    "associations={} generation={}\n",
                    v["associations"], v["generation"]
                )
            }
            Err(e) => s += &format!("status is not JSON: {e}\n{}", out.stdout),
        }
    } else {
        s += &format!("status failed: {}", out.stderr);
    }
    s
}

/// A line-by-line diff, for failure messages.
fn diff(before: &str, after: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let mut out = String::new();
    for i in 0..a.len().max(b.len()) {
        match (a.get(i), b.get(i)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => {
                out += &format!(
                    "  line {}: before {:?}\n           after  {:?}\n",
                    i + 1,
                    x.unwrap_or(&""),
                    y.unwrap_or(&"")
                );
            }
        }
    }
    out
}

/// `ping -c 3` from `ns`; all replies must come back.
fn ping_ok(ns: &str, dst: &str) -> Result<(), String> {
    let out = netns::exec(ns, &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", dst]);
    if out.success() && out.stdout.contains(" 0% packet loss") {
        Ok(())
    } else {
        Err(format!("ping {dst} lost replies:\n{out}"))
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// Starts `argv` in `ns` (with the first word resolved to a helper binary)
/// and waits for its "listening" line.
fn server(ns: &str, argv: &[&str]) -> Spawned {
    let mut s = netns::spawn(ns, argv).unwrap_or_else(|e| panic!("cannot start {argv:?}: {e:#}"));
    if let Err(e) = s.wait_for("listening", Duration::from_secs(10)) {
        panic!("{e:#}");
    }
    s
}

/// Starts a `floatip ARGS` process in the gateway namespace without waiting for it.
fn start_floatip(lab: &Lab, args: &[&str]) -> Spawned {
    let bin = lab.floatip_bin.to_string_lossy();
    let mut cmd: Command = netns::ns_command(&lab.gw, &[&bin]);
    cmd.arg("--bpffs")
        .arg(&lab.bpffs)
        .arg("--state")
        .arg(&lab.state)
        .args(args);
    Spawned::start(cmd).unwrap_or_else(|e| panic!("cannot start floatip {args:?}: {e:#}"))
}

// ---------------------------------------------------------------- error cases

/// One error case: `args` must fail with one stderr line containing every `expect` string.
struct Case {
    what: &'static str,
    args: &'static [&'static str],
    expect: &'static [&'static str],
}

const fn case(
    what: &'static str,
    args: &'static [&'static str],
    expect: &'static [&'static str],
) -> Case {
    Case { what, args, expect }
}

/// Error cases with the data plane attached. The state they run against:
/// pool `public` 203.0.113.10-20 with .10 (project demo, quota 1, associated
/// with inst1, tagged `web`, described), .11 and .12 allocated; pool `small`
/// 203.0.113.30-31, both allocated.
const ATTACHED_CASES: &[Case] = &[
    // editing: all of a command or nothing (the snapshot holds tags and descriptions)
    case(
        "set: a tag with a blank after a valid one",
        &[
            "ip",
            "set",
            "203.0.113.10",
            "--tag",
            "ok",
            "--tag",
            "two words",
        ],
        &["tag", "blanks"],
    ),
    case(
        "set: a tag given twice, with a description",
        &[
            "ip",
            "set",
            "203.0.113.10",
            "--description",
            "new",
            "--tag",
            "t",
            "--tag",
            "t",
        ],
        &["given twice"],
    ),
    case(
        "set: an unallocated floating IP",
        &["ip", "set", "203.0.113.19", "--tag", "a"],
        &["203.0.113.19", "not found"],
    ),
    case(
        "set: another project's address",
        &[
            "ip",
            "set",
            "203.0.113.11",
            "--tag",
            "a",
            "--project",
            "demo",
        ],
        &["203.0.113.11", "not found"],
    ),
    case(
        "unset: an unknown id",
        &["ip", "unset", "999", "--all-tag"],
        &["999", "not found"],
    ),
    case(
        "pool set: an unknown pool",
        &["pool", "set", "nope", "--description", "x"],
        &["pool nope does not exist"],
    ),
    case(
        "pool set: a control character",
        &["pool", "set", "public", "--description", "a\u{1b}[31m"],
        &["control"],
    ),
    case(
        "list: a malformed --fixed-ip-address",
        &["ip", "list", "--fixed-ip-address", "10.0.0.x"],
        &["10.0.0.x"],
    ),
    // malformed input
    case(
        "malformed --address",
        &["ip", "create", "public", "--address", "203.0.113.300"],
        &["203.0.113.300"],
    ),
    case(
        "malformed floating IP",
        &["ip", "associate", "203.0.113.x", INST2_IP],
        &["203.0.113.x"],
    ),
    case(
        "malformed fixed IP",
        &["ip", "associate", "203.0.113.11", "10.0.0.256"],
        &["10.0.0.256"],
    ),
    case(
        "malformed range (no LAST)",
        &["pool", "create", "p2", "--range", "203.0.113.50-"],
        &["203.0.113.50-"],
    ),
    case(
        "malformed range (not an address)",
        &["pool", "create", "p2", "--range", "banana"],
        &["banana"],
    ),
    case(
        "malformed CIDR (prefix /33)",
        &["pool", "create", "p2", "--range", "203.0.113.64/33"],
        &["203.0.113.64/33"],
    ),
    case(
        "malformed CIDR (prefix not a number)",
        &["pool", "create", "p2", "--range", "203.0.113.64/x"],
        &["203.0.113.64/x"],
    ),
    case(
        "malformed --exclude",
        &[
            "pool",
            "create",
            "p2",
            "--range",
            "203.0.113.40-203.0.113.45",
            "--exclude",
            "203.0.113.4x",
        ],
        &["203.0.113.4x"],
    ),
    // pools
    case(
        "FIRST > LAST",
        &[
            "pool",
            "create",
            "p2",
            "--range",
            "203.0.113.60-203.0.113.50",
        ],
        &["203.0.113.60", "203.0.113.50"],
    ),
    case(
        "range overlapping pool public",
        &["pool", "create", "p2", "--range", "203.0.113.16/28"],
        &["overlaps", "public"],
    ),
    case(
        "second range overlapping pool small",
        &[
            "pool",
            "create",
            "p2",
            "--range",
            "203.0.113.40-203.0.113.45",
            "--range",
            "203.0.113.31-203.0.113.35",
        ],
        &["overlaps", "small"],
    ),
    case(
        "empty pool after excludes",
        &[
            "pool",
            "create",
            "p2",
            "--range",
            "203.0.113.40-203.0.113.41",
            "--exclude",
            "203.0.113.40",
            "--exclude",
            "203.0.113.41",
        ],
        &["no usable address"],
    ),
    case(
        "pool name in use",
        &[
            "pool",
            "create",
            "public",
            "--range",
            "203.0.113.50-203.0.113.60",
        ],
        &["public", "already exists"],
    ),
    case(
        "pool holding the gateway's own address",
        &["pool", "create", "p2", "--range", "203.0.113.2-203.0.113.5"],
        &["203.0.113.2", "gw-ext"],
    ),
    case(
        "pool delete with 3 allocated",
        &["pool", "delete", "public"],
        &["public", "3 allocated"],
    ),
    case(
        "pool delete with 2 allocated",
        &["pool", "delete", "small"],
        &["small", "2 allocated"],
    ),
    case(
        "pool delete of an unknown pool",
        &["pool", "delete", "nosuch"],
        &["nosuch"],
    ),
    // allocation
    case(
        "ip create on an exhausted pool",
        &["ip", "create", "small"],
        &["no more floating IPs in pool small"],
    ),
    case(
        "ip create on an unknown pool",
        &["ip", "create", "nosuch"],
        &["nosuch"],
    ),
    case(
        "--address outside the pool",
        &["ip", "create", "public", "--address", "203.0.113.30"],
        &["203.0.113.30", "public"],
    ),
    case(
        "--address outside every pool",
        &["ip", "create", "public", "--address", "192.0.2.10"],
        &["192.0.2.10", "public"],
    ),
    case(
        "--address already allocated",
        &["ip", "create", "public", "--address", "203.0.113.11"],
        &["203.0.113.11", "already allocated"],
    ),
    case(
        "project over quota",
        &["ip", "create", "public", "--project", "demo"],
        &["demo", "quota"],
    ),
    // association
    case(
        "associate an unallocated address",
        &["ip", "associate", "203.0.113.15", INST2_IP],
        &["203.0.113.15"],
    ),
    case(
        "associate an address of no pool",
        &["ip", "associate", "192.0.2.10", INST2_IP],
        &["192.0.2.10"],
    ),
    case(
        "fixed IP that already has a floating IP",
        &["ip", "associate", "203.0.113.11", INST1_IP],
        &["10.0.0.11", "203.0.113.10"],
    ),
    case(
        "floating IP already associated (no --force)",
        &["ip", "associate", "203.0.113.10", INST2_IP],
        &["203.0.113.10", "--force"],
    ),
    case(
        "fixed IP inside a pool",
        &["ip", "associate", "203.0.113.11", "203.0.113.19"],
        &["203.0.113.19", "public"],
    ),
    case(
        "fixed IP inside pool small",
        &["ip", "associate", "203.0.113.11", "203.0.113.30"],
        &["203.0.113.30", "small"],
    ),
    case(
        "fixed IP behind the external NIC",
        &["ip", "associate", "203.0.113.11", "198.51.100.7"],
        &["198.51.100.7", "not reachable"],
    ),
    case(
        "fixed IP on the external segment outside pools",
        &["ip", "associate", "203.0.113.11", "203.0.113.99"],
        &["203.0.113.99", "not reachable"],
    ),
    case(
        "fixed IP that is not a host address",
        &["ip", "associate", "203.0.113.11", "255.255.255.255"],
        &["255.255.255.255"],
    ),
    case(
        "another project's address is not found",
        &[
            "ip",
            "associate",
            "203.0.113.11",
            INST2_IP,
            "--project",
            "other",
        ],
        &["203.0.113.11", "not found"],
    ),
    case(
        "disassociate an unallocated address",
        &["ip", "disassociate", "203.0.113.15"],
        &["203.0.113.15"],
    ),
    case(
        "delete an unallocated address",
        &["ip", "delete", "203.0.113.15"],
        &["203.0.113.15"],
    ),
    case(
        "delete another project's address",
        &["ip", "delete", "203.0.113.10", "--project", "other"],
        &["203.0.113.10", "not found"],
    ),
];

/// Association commands after `floatip detach`: the database must not change either.
const DETACHED_CASES: &[Case] = &[
    case(
        "associate while detached",
        &["ip", "associate", "203.0.113.11", INST2_IP],
        &["not attached", "floatip attach"],
    ),
    case(
        "associate --force while detached",
        &["ip", "associate", "203.0.113.10", INST2_IP, "--force"],
        &["not attached", "floatip attach"],
    ),
];
// `ip disassociate` and `ip delete` while detached change the database alone (issue 11):
// `safety::drift_is_visible` checks that the next attach applies them.

/// Runs every case, returning one description per failed case.
fn run_cases(lab: &Lab, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases {
        let before = snapshot(lab);
        let out = lab.floatip(c.args);
        let after = snapshot(lab);
        let mut problems = Vec::new();
        if out.timed_out || out.status.is_none() {
            problems.push("did not finish".to_string());
        } else if out.success() {
            problems.push("exited 0".to_string());
        } else if out.status.and_then(|s| s.code()).is_none() {
            problems.push(format!("killed by a signal ({:?})", out.status));
        }
        let stderr = out.stderr.trim_end_matches('\n');
        let lines = if stderr.is_empty() {
            0
        } else {
            stderr.lines().count()
        };
        if lines != 1 {
            problems.push(format!("{lines} lines on stderr instead of 1"));
        }
        for e in c.expect {
            if !stderr.contains(e) {
                problems.push(format!("stderr does not mention {e:?}"));
            }
        }
        if !out.stdout.is_empty() {
            problems.push("printed on stdout".to_string());
        }
        if before != after {
            problems.push(format!("state changed:\n{}", diff(&before, &after)));
        }
        let verdict = if problems.is_empty() { "ok" } else { "FAILED" };
        eprintln!(
            "[errors] {:<55} {verdict}: {}",
            c.what,
            stderr.lines().next().unwrap_or("")
        );
        if !problems.is_empty() {
            failures.push(format!(
                "{} (floatip {}):\n  - {}\n  stdout: {:?}\n  stderr: {:?}",
                c.what,
                c.args.join(" "),
                problems.join("\n  - "),
                out.stdout,
                out.stderr
            ));
        }
    }
    failures
}

#[test]
fn errors_leave_state_unchanged() {
    netns::require_root();
    let _serial = netns::serialize();
    let lab = attached_lab();

    lab.pool_create("public", "203.0.113.10-203.0.113.20");
    lab.pool_create("small", "203.0.113.30-203.0.113.31");
    lab.ok(&["ip", "create", "small"]);
    lab.ok(&["ip", "create", "small"]);
    let first = lab.json(&["ip", "create", "public", "--project", "demo"]);
    assert_eq!(
        first["floating_ip_address"], "203.0.113.10",
        "lowest free address first: {first}"
    );
    lab.ok(&["quota", "set", "demo", "--floating-ips", "1"]);
    lab.ok(&["ip", "create", "public", "--address", "203.0.113.11"]);
    lab.ok(&["ip", "create", "public"]);
    lab.ok(&[
        "ip",
        "associate",
        "203.0.113.10",
        INST1_IP,
        "--instance",
        "web1",
    ]);
    assert_eq!(
        lab.nat_pairs(),
        vec![("203.0.113.10".to_string(), INST1_IP.to_string())]
    );
    lab.ok(&[
        "ip",
        "set",
        "203.0.113.10",
        "--tag",
        "web",
        "--description",
        "web1's",
    ]);

    let mut failures = run_cases(&lab, ATTACHED_CASES);

    // Detached: the association commands fail and change nothing.
    let associations = lab.nat_pairs();
    lab.ok(&["detach"]);
    failures.extend(run_cases(&lab, DETACHED_CASES));
    // Attaching again brings back exactly the associations there were.
    lab.attach().check().unwrap_or_else(|e| panic!("{e:#}"));
    let reloaded = lab.nat_pairs();
    if reloaded != associations {
        failures.push(format!(
            "after detach/attach the maps hold {reloaded:?} instead of {associations:?}"
        ));
    }

    assert!(
        failures.is_empty(),
        "{} of {} error cases failed:\n\n{}",
        failures.len(),
        ATTACHED_CASES.len() + DETACHED_CASES.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------- listing

/// `ip list --fixed-ip-address/--floating-ip-address/--instance` on real associations; tags
/// and descriptions are kept through moves and disassociation, and editing them leaves the
/// maps alone.
#[test]
fn list_filters_by_association() {
    netns::require_root();
    let _serial = netns::serialize();
    let lab = attached_lab();
    lab.pool_create("public", "203.0.113.10-203.0.113.20");
    for _ in 0..3 {
        lab.ok(&["ip", "create", "public"]);
    }
    lab.ok(&["ip", "associate", FIP1, INST1_IP, "--instance", "web1"]);
    lab.ok(&["ip", "associate", FIP2, INST2_IP, "--instance", "web2"]);
    let listed = |filter: &[&str]| {
        let args = [
            &["ip", "list", "-f", "value", "-c", "floating_ip_address"][..],
            filter,
        ]
        .concat();
        let out = lab.floatip(&args);
        assert!(out.success(), "{out}");
        out.stdout
    };
    assert_eq!(
        listed(&["--fixed-ip-address", INST2_IP]),
        format!(
            "{FIP2}
"
        )
    );
    assert_eq!(
        listed(&["--instance", "web1"]),
        format!(
            "{FIP1}
"
        )
    );
    assert_eq!(
        listed(&["--floating-ip-address", "203.0.113.12"]),
        "203.0.113.12
"
    );
    assert_eq!(listed(&["--instance", "web1", "--status", "DOWN"]), "");
    assert_eq!(listed(&["--fixed-ip-address", "10.0.0.99"]), "");
    assert_eq!(listed(&["--instance", "web3"]), "");

    let pairs = lab.nat_pairs();
    lab.ok(&["ip", "set", FIP1, "--tag", "web", "--description", "front"]);
    assert_eq!(lab.nat_pairs(), pairs, "editing a record changed the maps");
    // Moved and then disassociated, the record keeps its tags and description.
    lab.ok(&["ip", "disassociate", FIP2]);
    lab.ok(&[
        "ip",
        "associate",
        FIP1,
        INST2_IP,
        "--instance",
        "web2",
        "--force",
    ]);
    assert_eq!(
        listed(&["--instance", "web2", "--tags", "web"]),
        format!(
            "{FIP1}
"
        )
    );
    lab.ok(&["ip", "disassociate", FIP1]);
    let shown = lab.json(&["ip", "show", FIP1, "-c", "tags", "-c", "description"]);
    assert_eq!(
        shown,
        serde_json::json!({"tags": ["web"], "description": "front"})
    );
}

// ---------------------------------------------------------------- concurrency

#[test]
fn concurrent_allocation_and_association() {
    netns::require_root();
    let _serial = netns::serialize();
    let lab = attached_lab();
    lab.pool_create("conc", "203.0.113.100-203.0.113.119");
    let pool = lab.json(&["pool", "show", "conc"]);
    assert_eq!(
        pool["free"], 20,
        "pool conc should have 20 free addresses: {pool}"
    );

    // 32 allocations at once: all processes run before any is waited for.
    let procs: Vec<Spawned> = (0..32)
        .map(|_| start_floatip(&lab, &["ip", "create", "conc", "-f", "json"]))
        .collect();
    let outs: Vec<Output> = procs
        .into_iter()
        .map(|p| p.finish(Duration::from_secs(120)))
        .collect();
    let mut won = Vec::new();
    let mut problems = Vec::new();
    for out in &outs {
        if out.success() {
            match serde_json::from_str::<Value>(&out.stdout) {
                Ok(v) => won.push(str_field(&v, "floating_ip_address")),
                Err(e) => problems.push(format!(
                    "successful ip create printed no JSON ({e}):\n{out}"
                )),
            }
        } else if !(out.stderr.trim_end().lines().count() == 1
            && out.stderr.contains("no more floating IPs in pool conc"))
        {
            problems.push(format!(
                "a losing ip create should say \"no more floating IPs in pool conc\":\n{out}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    let distinct: BTreeSet<Ipv4Addr> = won
        .iter()
        .map(|a| a.parse().expect("an IPv4 address"))
        .collect();
    assert_eq!(
        won.len(),
        20,
        "exactly 20 of 32 concurrent ip create should succeed, got {}: {won:?}",
        won.len()
    );
    assert_eq!(
        distinct.len(),
        20,
        "the 20 allocations must be distinct: {won:?}"
    );
    let want: BTreeSet<Ipv4Addr> = (100..120).map(|i| Ipv4Addr::new(203, 0, 113, i)).collect();
    assert_eq!(
        distinct, want,
        "the allocations must be exactly the pool's 20 addresses"
    );
    let listed: BTreeSet<Ipv4Addr> = ip_rows(&lab, &["--pool", "conc"])
        .iter()
        .map(|r| r.0.parse().expect("an IPv4 address"))
        .collect();
    assert_eq!(
        listed, want,
        "ip list --pool conc must show the 20 allocations"
    );
    let pool = lab.json(&["pool", "show", "conc"]);
    assert_eq!(
        (pool["allocated"].as_u64(), pool["free"].as_u64()),
        (Some(20), Some(0)),
        "{pool}"
    );

    // Two processes associate the same fixed IP at once: exactly one wins.
    // Repeated, since one round may not overlap.
    let (a, b) = ("203.0.113.100", "203.0.113.101");
    for round in 0..8 {
        let pa = start_floatip(&lab, &["ip", "associate", a, INST1_IP]);
        let pb = start_floatip(&lab, &["ip", "associate", b, INST1_IP]);
        let (oa, ob) = (
            pa.finish(Duration::from_secs(60)),
            pb.finish(Duration::from_secs(60)),
        );
        let (winner, loser) = match (oa.success(), ob.success()) {
            (true, false) => (a, &ob),
            (false, true) => (b, &oa),
            _ => panic!(
                "round {round}: exactly one of two associations of {INST1_IP} must win:\n{oa}\n{ob}"
            ),
        };
        assert!(
            loser.stderr.trim_end().lines().count() == 1
                && loser.stderr.contains(INST1_IP)
                && loser.stderr.contains("already"),
            "round {round}: the loser should say {INST1_IP} already has a floating IP:\n{loser}"
        );
        assert_eq!(
            lab.nat_pairs(),
            vec![(winner.to_string(), INST1_IP.to_string())],
            "round {round}: the maps must hold exactly the winner's association"
        );
        let active = ip_rows(&lab, &["--status", "ACTIVE"]);
        assert_eq!(
            active,
            vec![(
                winner.to_string(),
                INST1_IP.to_string(),
                "ACTIVE".to_string()
            )],
            "round {round}: the database must hold exactly the winner's association"
        );
        lab.ok(&["ip", "disassociate", winner]);
    }

    // Two processes associate one floating IP with two fixed IPs at once: one wins.
    for round in 0..4 {
        let pa = start_floatip(&lab, &["ip", "associate", a, INST1_IP]);
        let pb = start_floatip(&lab, &["ip", "associate", a, INST2_IP]);
        let (oa, ob) = (
            pa.finish(Duration::from_secs(60)),
            pb.finish(Duration::from_secs(60)),
        );
        let fixed = match (oa.success(), ob.success()) {
            (true, false) => INST1_IP,
            (false, true) => INST2_IP,
            _ => panic!(
                "round {round}: exactly one of two associations of {a} must win:\n{oa}\n{ob}"
            ),
        };
        assert_eq!(
            lab.nat_pairs(),
            vec![(a.to_string(), fixed.to_string())],
            "round {round}"
        );
        lab.ok(&["ip", "disassociate", a]);
    }
    assert_eq!(
        lab.nat_pairs(),
        vec![],
        "every association was removed again"
    );
}

// ---------------------------------------------------------------- restart

#[test]
fn restart_restores_associations() {
    netns::require_root();
    let _serial = netns::serialize();
    let lab = attached_lab();
    lab.pool_create("public", "203.0.113.10-203.0.113.20");
    lab.pool_create("more", "203.0.113.64/28");
    for _ in 0..2 {
        lab.ok(&["ip", "create", "public", "--project", "demo"]);
    }
    lab.ok(&["ip", "associate", FIP1, INST1_IP, "--instance", "web1"]);
    lab.ok(&["ip", "associate", FIP2, INST2_IP, "--instance", "web2"]);
    // More associations (to tenant addresses without a host), from the second pool.
    for i in 0..6u8 {
        let fip = lab.json(&["ip", "create", "more"]);
        let fip = str_field(&fip, "floating_ip_address");
        lab.ok(&["ip", "associate", &fip, &format!("10.0.0.{}", 100 + i)]);
    }
    // One allocated but not associated: must stay unassociated.
    lab.ok(&["ip", "create", "public"]);
    let pairs = lab.nat_pairs();
    assert_eq!(pairs.len(), 8, "8 associations in the maps: {pairs:?}");
    let ips = ip_rows(&lab, &[]);
    let from_db: Vec<(String, String)> = {
        let mut v: Vec<_> = ips
            .iter()
            .filter(|r| r.2 == "ACTIVE")
            .map(|r| (r.0.clone(), r.1.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(pairs, from_db, "maps and database agree before the restart");
    ping_ok(&lab.ext, FIP1).unwrap_or_else(|e| panic!("before the restart: {e}"));

    // What a reboot does: programs, links and pins are gone; the database stays.
    lab.ok(&["detach"]);
    if lab.bpffs.exists() {
        std::fs::remove_dir_all(&lab.bpffs)
            .unwrap_or_else(|e| panic!("cannot remove {}: {e}", lab.bpffs.display()));
    }
    let out = lab.floatip(&["nat", "list"]);
    assert!(!out.success(), "nat list must fail without pins:\n{out}");
    assert!(
        ping_ok(&lab.ext, FIP1).is_err(),
        "{FIP1} must not answer while floatip is detached"
    );

    let out = lab.attach().check().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        lab.nat_pairs(),
        pairs,
        "after attach every association is back in the maps:\n{out}"
    );
    assert_eq!(
        ip_rows(&lab, &[]),
        ips,
        "the database is unchanged by the restart"
    );

    let mut failures = Vec::new();
    for fip in [FIP1, FIP2] {
        if let Err(e) = ping_ok(&lab.ext, fip) {
            failures.push(e);
        }
    }
    // A TCP exchange through the restored mapping, from the instance's side.
    let srv = server(&lab.ext, &[NETPROBE, "tcp-serve", "5101"]);
    let client = lab.netprobe(&lab.inst2, &["tcp-send", EXT_IP, "5101", "65536", "3"]);
    let srv = srv.finish(Duration::from_secs(15));
    if !(client.success() && srv.stdout.contains(&format!("peer={FIP2}:"))) {
        failures.push(format!(
            "inst2 -> ext TCP should arrive from {FIP2}:\n{client}\n{srv}"
        ));
    }
    assert!(
        failures.is_empty(),
        "traffic after the restart:\n{}",
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------- disassociate

/// `recv seq=N sent_ns=T` lines of a trickle receiver: (seq, sent_ns).
fn received(out: &str) -> Vec<(u64, u128)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("recv "))
        .filter_map(|l| {
            let mut seq = None;
            let mut sent = None;
            for kv in l.split_whitespace() {
                if let Some(v) = kv.strip_prefix("seq=") {
                    seq = v.parse().ok();
                } else if let Some(v) = kv.strip_prefix("sent_ns=") {
                    sent = v.parse().ok();
                }
            }
            Some((seq?, sent?))
        })
        .collect()
}

#[test]
fn disassociate_cuts_open_connections() {
    netns::require_root();
    let _serial = netns::serialize();
    let lab = attached_lab();
    lab.pool_create("public", "203.0.113.10-203.0.113.20");
    let fip = str_field(
        &lab.json(&["ip", "create", "public"]),
        "floating_ip_address",
    );
    assert_eq!(fip, FIP1);
    lab.ok(&["ip", "associate", FIP1, INST1_IP, "--instance", "web1"]);

    // ext keeps writing timestamped lines on one connection to inst1.
    let receiver = server(&lab.inst1, &[DEMO, "trickle-recv", "7000"]);
    let sender =
        netns::spawn(&lab.ext, &[DEMO, "trickle-send", FIP1, "7000"]).expect("start trickle-send");
    let deadline = Instant::now() + Duration::from_secs(15);
    while received(&receiver.stdout_so_far()).len() < 10 {
        assert!(
            Instant::now() < deadline,
            "the connection through {FIP1} carries no data:\nreceiver: {}\nsender: {}{}",
            receiver.stdout_so_far(),
            sender.stdout_so_far(),
            sender.stderr_so_far()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        receiver
            .stdout_so_far()
            .contains(&format!("accepted peer={EXT_IP}:")),
        "{}",
        receiver.stdout_so_far()
    );

    lab.ok(&["ip", "disassociate", FIP1]);
    let cut = now_ns();
    let at_cut = received(&receiver.stdout_so_far()).len();
    thread::sleep(Duration::from_secs(2));

    // Nothing written after the disassociation may reach inst1.
    let late = |out: &str| -> Vec<(u64, u128)> {
        received(out)
            .into_iter()
            .filter(|&(_, sent)| sent >= cut)
            .collect()
    };
    let got = receiver.stdout_so_far();
    let after_2s = received(&got).len();
    assert!(
        late(&got).is_empty(),
        "inst1 received data written after `ip disassociate` returned: {:?}\n(received {at_cut} lines before, {after_2s} after 2 s)",
        late(&got)
    );
    eprintln!(
        "[disassociate] inst1 had received {at_cut} lines when `ip disassociate` returned, {after_2s} two seconds later, \
         none written after it"
    );
    assert!(
        sender.stderr_so_far().is_empty(),
        "the sender should still be writing (its packets now go nowhere): {}",
        sender.stderr_so_far()
    );

    // Re-associate the floating IP with the other instance.
    lab.ok(&["ip", "associate", FIP1, INST2_IP, "--instance", "web2"]);
    assert_eq!(
        lab.nat_pairs(),
        vec![(FIP1.to_string(), INST2_IP.to_string())]
    );
    // Both instances listen; only inst2 may get the new connection.
    let old = server(&lab.inst1, &[NETPROBE, "tcp-serve", "7001"]);
    let new = server(&lab.inst2, &[NETPROBE, "tcp-serve", "7001"]);
    let client = lab.netprobe(&lab.ext, &["tcp-send", FIP1, "7001", "100000", "11"]);
    let new = new.finish(Duration::from_secs(15));
    thread::sleep(Duration::from_millis(500));
    let old = old.kill();
    assert!(
        client.success(),
        "a new connection to {FIP1} should work after re-association:\n{client}\n{new}"
    );
    assert!(
        new.stdout.contains(&format!("peer={EXT_IP}:")),
        "inst2 should get the new connection from {EXT_IP}:\n{new}"
    );
    assert!(
        !old.stdout.contains("peer="),
        "inst1 must not get the new connection:\n{old}"
    );

    // The old connection's retransmissions now meet inst2 (which resets
    // them); inst1 still gets nothing written after the cut.
    let got = receiver.kill();
    assert!(
        late(&got.stdout).is_empty(),
        "inst1 received data written after the cut: {:?}",
        late(&got.stdout)
    );
    drop(sender);

    // `--force` moves an associated floating IP in place: back to inst1.
    let out = lab.floatip(&["ip", "associate", FIP1, INST1_IP]);
    assert!(
        !out.success() && out.stderr.contains("--force"),
        "moving without --force must fail:\n{out}"
    );
    lab.ok(&[
        "ip",
        "associate",
        FIP1,
        INST1_IP,
        "--instance",
        "web1",
        "--force",
    ]);
    assert_eq!(
        lab.nat_pairs(),
        vec![(FIP1.to_string(), INST1_IP.to_string())]
    );
    let back = server(&lab.inst1, &[NETPROBE, "tcp-serve", "7002"]);
    let client = lab.netprobe(&lab.ext, &["tcp-send", FIP1, "7002", "10000", "12"]);
    let back = back.finish(Duration::from_secs(15));
    assert!(
        client.success() && back.stdout.contains(&format!("peer={EXT_IP}:")),
        "after --force the floating IP should lead to inst1 again:\n{client}\n{back}"
    );
}
