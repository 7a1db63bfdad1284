//! Crash consistency of the control plane: the `floatip` binary (built with
//! the `failpoints` feature) is killed with SIGKILL at every failpoint of
//! associate, disassociate, delete and bulk associate. The next command must
//! find and repair any difference, after which the database and the maps
//! agree exactly and no half pair is left in the maps.

use std::{collections::BTreeSet, net::Ipv4Addr, os::unix::process::ExitStatusExt};

use floatip::{dataplane::Dataplane, failpoint};
use tests::netns::{self, Output, Topology};

type Pairs = BTreeSet<(Ipv4Addr, Ipv4Addr)>;

struct Gateway {
    _topo: Topology,
    ns: String,
    bpffs: String,
    state: String,
    bin: String,
}

impl Gateway {
    /// One namespace with an external and an internal NIC (a veth pair),
    /// floatip attached in xdp-generic mode. No traffic is needed here.
    fn new() -> Gateway {
        let mut topo = Topology::new();
        let ns = topo.namespace("gw").unwrap();
        topo.veth(&ns, "ext0", &ns, "int0").unwrap();
        for argv in [
            vec!["ip", "addr", "add", "203.0.113.2/24", "dev", "ext0"],
            vec!["ip", "addr", "add", "10.0.0.1/24", "dev", "int0"],
            vec!["ip", "link", "set", "ext0", "up"],
            vec!["ip", "link", "set", "int0", "up"],
        ] {
            netns::assert_success(&netns::exec(&ns, &argv));
        }
        let dir = topo.temp_dir("state").unwrap();
        let bpffs = format!("/sys/fs/bpf/{}", topo.prefix());
        let state = dir.join("state.db").to_string_lossy().into_owned();
        let bin = netns::floatip_binary().to_string_lossy().into_owned();
        // Registered on the topology so pins go even when the test fails.
        let (ns2, bin2, bpffs2, state2) = (ns.clone(), bin.clone(), bpffs.clone(), state.clone());
        topo.on_drop(move || {
            let _ = netns::exec(
                &ns2,
                &[&bin2, "--bpffs", &bpffs2, "--state", &state2, "detach"],
            );
            let _ = std::fs::remove_dir_all(&bpffs2);
        });
        let gw = Gateway {
            _topo: topo,
            ns,
            bpffs,
            state,
            bin,
        };
        gw.ok(&[
            "attach",
            "--external",
            "ext0",
            "--internal",
            "int0",
            "--mode",
            "xdp-generic",
        ]);
        gw.ok(&[
            "pool",
            "create",
            "public",
            "--range",
            "203.0.113.10-203.0.113.60",
        ]);
        gw
    }

    fn run(&self, failpoint: Option<&str>, args: &[&str]) -> Output {
        let mut argv: Vec<&str> = Vec::new();
        let fp = format!("FLOATIP_FAILPOINT={}", failpoint.unwrap_or(""));
        argv.extend([
            "env",
            &fp,
            &self.bin,
            "--bpffs",
            &self.bpffs,
            "--state",
            &self.state,
        ]);
        argv.extend_from_slice(args);
        netns::exec(&self.ns, &argv)
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(None, args);
        netns::assert_success(&out);
        out
    }

    /// Database associations, read through the CLI.
    fn db_pairs(&self) -> BTreeSet<(Ipv4Addr, Ipv4Addr)> {
        let out = self.ok(&["ip", "list", "-f", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|r| {
                let f = r["floating_ip_address"].as_str()?.parse().ok()?;
                let x = r["fixed_ip_address"].as_str()?.parse().ok()?;
                Some((f, x))
            })
            .collect()
    }

    /// Both association maps, each as (floating, fixed) pairs.
    fn map_pairs(&self) -> (Pairs, Pairs) {
        let dp = Dataplane::open(self.bpffs.as_ref()).unwrap();
        let fwd = dp
            .nat_list()
            .unwrap()
            .into_iter()
            .map(|p| (p.floating, p.fixed))
            .collect();
        let rev = dp
            .nat_list_reverse()
            .unwrap()
            .into_iter()
            .map(|p| (p.floating, p.fixed))
            .collect();
        (fwd, rev)
    }

    /// Back to: .10-.15 allocated, .10→10.0.0.10 and .11→10.0.0.11 associated.
    fn reset(&self) {
        for (f, _) in self.db_pairs() {
            self.ok(&["ip", "disassociate", &f.to_string()]);
        }
        let out = self.ok(&["ip", "list", "-f", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        for r in v.as_array().unwrap() {
            self.ok(&["ip", "delete", r["floating_ip_address"].as_str().unwrap()]);
        }
        for _ in 10..=15 {
            self.ok(&["ip", "create", "public"]);
        }
        self.ok(&["ip", "associate", "203.0.113.10", "10.0.0.10"]);
        self.ok(&["ip", "associate", "203.0.113.11", "10.0.0.11"]);
    }
}

#[test]
fn every_failpoint_is_repaired_by_the_next_command() {
    netns::require_root();
    let _serial = netns::serialize();
    let gw = Gateway::new();
    let bulk = format!(
        "{}/bulk.txt",
        std::path::Path::new(&gw.state).parent().unwrap().display()
    );
    std::fs::write(
        &bulk,
        "203.0.113.12 10.0.0.12\n203.0.113.13 10.0.0.13\n203.0.113.14 10.0.0.14\n203.0.113.15 10.0.0.15\n",
    )
    .unwrap();
    let ops: Vec<(&str, Vec<&str>)> = vec![
        (
            "associate",
            vec!["ip", "associate", "203.0.113.12", "10.0.0.12"],
        ),
        (
            "move",
            vec!["ip", "associate", "203.0.113.11", "10.0.0.20", "--force"],
        ),
        ("disassociate", vec!["ip", "disassociate", "203.0.113.11"]),
        ("delete", vec!["ip", "delete", "203.0.113.10"]),
        ("bulk", vec!["ip", "associate", "--from-file", &bulk]),
    ];
    let mut killed = 0;
    let mut reached = BTreeSet::new();
    for (name, args) in &ops {
        for fp in failpoint::ALL {
            gw.reset();
            let out = gw.run(Some(fp), args);
            let was_killed = out.status.and_then(|s| s.signal()) == Some(libc::SIGKILL);
            if !was_killed {
                // Not every operation passes every point (a move writes no new
                // pair; only bulk has a middle); then it must simply succeed.
                netns::assert_success(&out);
                continue;
            }
            killed += 1;
            reached.insert(*fp);
            // The next association command finds and repairs the difference.
            gw.ok(&["ip", "disassociate", "203.0.113.14"]);
            let db = gw.db_pairs();
            let (fwd, rev) = gw.map_pairs();
            assert_eq!(
                fwd, db,
                "{name} killed at {fp}: floating->fixed map differs from the database"
            );
            assert_eq!(
                rev, db,
                "{name} killed at {fp}: fixed->floating map differs (half pair?)"
            );
            let filter = Dataplane::open(gw.bpffs.as_ref())
                .unwrap()
                .spoof_filter_mismatches()
                .unwrap();
            assert!(
                filter.is_empty(),
                "{name} killed at {fp}: anti-spoofing filter (bucket, count, fixed IPs) {filter:?}"
            );
        }
    }
    // Every failpoint is reached by at least one operation.
    assert!(
        killed >= failpoint::ALL.len() * 3,
        "only {killed} crashes happened"
    );
}
