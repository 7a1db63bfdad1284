//! The control layer against the real maps: each test runs in a network namespace of its own
//! (an internal NIC `int0` serving 10.0.0.0/8, an external `eth0` with the gateway address
//! 198.51.100.1), with the data-plane object loaded and its maps pinned under a private bpffs
//! directory. Needs root, as the rest of the suite.

use std::{net::Ipv4Addr, path::PathBuf, process::Command};

use anyhow::Result;

use super::{sync::repair, *};
use crate::{
    addr::{PoolRanges, parse_bulk},
    dataplane::{Dataplane, Role, TestPrograms},
    iface,
    store::{Store, TempDir},
};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Moves the calling test's thread into a new network namespace with the gateway's NICs.
/// Only this thread moves; the namespace goes when the thread ends.
fn gateway_netns() {
    // SAFETY: unshare only affects the calling thread's namespaces.
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        0,
        "unshare(CLONE_NEWNET)"
    );
    for cmd in [
        "link set lo up",
        "link add int0 type veth peer name int0p",
        "link add eth0 type veth peer name eth0p",
        "addr add 10.255.0.1/8 dev int0",
        "addr add 198.51.100.1/24 dev eth0",
        "link set int0 up",
        "link set int0p up",
        "link set eth0 up",
        "link set eth0p up",
    ] {
        let st = Command::new("ip").args(cmd.split(' ')).status().unwrap();
        assert!(st.success(), "ip {cmd}");
    }
}

struct Env {
    _dir: TempDir,
    path: PathBuf,
    bpffs: PathBuf,
    max_associations: u32,
    progs: Option<TestPrograms>,
}

impl Env {
    fn new(tag: &str) -> Self {
        Self::with_capacity(tag, 64)
    }

    /// Maps of `max_associations` pairs, so that a test can make them overflow.
    fn with_capacity(tag: &str, max_associations: u32) -> Self {
        gateway_netns();
        let dir = TempDir::new(tag);
        let path = dir.0.join("state.db");
        let bpffs = PathBuf::from("/sys/fs/bpf").join(
            dir.0
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace('.', "-"),
        );
        let mut env = Self {
            _dir: dir,
            path,
            bpffs,
            max_associations,
            progs: None,
        };
        env.fresh_maps();
        env
    }

    /// Loads the object again on empty maps (a reboot).
    fn fresh_maps(&mut self) {
        if let Some(p) = self.progs.take() {
            p.cleanup().unwrap();
        }
        let nics = [
            (
                iface::index("eth0").unwrap(),
                iface::mac("eth0").unwrap(),
                Role::External,
            ),
            (
                iface::index("int0").unwrap(),
                iface::mac("int0").unwrap(),
                Role::Internal,
            ),
        ];
        self.progs =
            Some(TestPrograms::load_with_nics(&self.bpffs, self.max_associations, &nics).unwrap());
    }

    fn dp(&self) -> Dataplane {
        Dataplane::open(&self.bpffs).unwrap()
    }

    fn attached(&self) -> Control {
        Control::new(
            Store::open(&self.path).unwrap(),
            &self.bpffs,
            Some(self.dp()),
        )
    }

    fn detached(&self) -> Control {
        let none = self.bpffs.join("absent");
        Control::new(Store::open(&self.path).unwrap(), &none, None)
    }

    fn db_pairs(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        Store::open(&self.path)
            .unwrap()
            .read(|tx| tx.associations())
            .unwrap()
    }

    fn map_pairs(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        self.dp()
            .nat_list()
            .unwrap()
            .into_iter()
            .map(|p| (p.floating, p.fixed))
            .collect()
    }

    fn trie(&self) -> Vec<(String, u8, bool)> {
        let mut t = self.dp().pool_prefixes().unwrap();
        t.sort();
        t.into_iter()
            .map(|(a, l, x, _)| (a.to_string(), l, x))
            .collect()
    }

    fn db_generation(&self) -> u64 {
        Store::open(&self.path)
            .unwrap()
            .read(|tx| tx.generation())
            .unwrap()
    }

    fn map_generation(&self) -> u64 {
        self.dp().generation().unwrap()
    }

    /// The invariant after every command: maps == database (both halves of every pair), the
    /// anti-spoofing filter exact, generations equal.
    fn assert_in_step(&self) {
        let mut db = self.db_pairs();
        db.sort();
        assert_eq!(db, self.map_pairs());
        let dp = self.dp();
        let rev: Vec<_> = dp
            .nat_list_reverse()
            .unwrap()
            .into_iter()
            .map(|p| (p.floating, p.fixed))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(rev, self.map_pairs(), "reverse map mirrors the forward map");
        assert!(
            dp.spoof_filter_mismatches().unwrap().is_empty(),
            "spoof filter exact"
        );
        assert_eq!(self.map_generation(), self.db_generation());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(p) = self.progs.take() {
            let _ = p.cleanup();
        }
    }
}

fn ranges(r: &[&str], ex: &[&str]) -> PoolRanges {
    PoolRanges::parse(r, ex).unwrap()
}

fn err<T: std::fmt::Debug>(r: Result<T>) -> String {
    format!("{:#}", r.unwrap_err())
}

fn assoc<'a>(floating: &str, fixed: &str) -> Associate<'a> {
    Associate {
        floating: ip(floating),
        fixed: ip(fixed),
        instance: None,
        project: None,
        force: false,
    }
}

/// A pool "public" on 203.0.113.0/29 (6 usable addresses) and one on 192.0.2.0/30.
fn with_pools(env: &Env) -> Control {
    let mut c = env.attached();
    c.pool_create(
        "public",
        &ranges(&["203.0.113.0/29"], &[]),
        Some("eth0"),
        None,
    )
    .unwrap();
    c.pool_create("small", &ranges(&["192.0.2.0/30"], &[]), None, None)
        .unwrap();
    c
}

#[test]
fn pool_lifecycle() {
    let env = Env::new("ctl-pool");
    let mut c = env.attached();
    let p = c
        .pool_create(
            "public",
            &ranges(&["203.0.113.0/24"], &["203.0.113.9"]),
            Some("eth0"),
            None,
        )
        .unwrap();
    assert_eq!((p.total, p.allocated, p.free), (253, 0, 253));
    assert_eq!(p.excludes, ["203.0.113.9"]);
    assert_eq!(
        env.trie(),
        [
            ("203.0.113.0".into(), 24, false),
            ("203.0.113.0".into(), 32, true),
            ("203.0.113.9".into(), 32, true),
            ("203.0.113.255".into(), 32, true),
        ]
    );

    assert_eq!(
        err(c.pool_create("public", &ranges(&["192.0.2.0/24"], &[]), None, None)),
        "pool public already exists"
    );
    assert_eq!(
        err(c.pool_create(
            "other",
            &ranges(&["203.0.113.128-203.0.114.5"], &[]),
            None,
            None
        )),
        "pool other (203.0.113.128-203.0.114.5) overlaps pool public (203.0.113.0/24)"
    );
    assert_eq!(
        err(c.pool_create("mine", &ranges(&["198.51.100.0/24"], &[]), None, None)),
        "pool mine contains 198.51.100.1, an address of the gateway's interface eth0; leave it out with \
         --exclude 198.51.100.1"
    );
    c.pool_create(
        "mine",
        &ranges(&["198.51.100.0/24"], &["198.51.100.1"]),
        None,
        None,
    )
    .unwrap();
    assert!(
        err(c.pool_create("bad name", &ranges(&["192.0.2.0/24"], &[]), None, None))
            .contains("blanks")
    );

    c.ip_create("public", None, None, None).unwrap();
    c.ip_create("public", None, None, None).unwrap();
    let p = c.pool_show("public").unwrap();
    assert_eq!((p.total, p.allocated, p.free), (253, 2, 251));
    assert_eq!(
        c.pool_list()
            .unwrap()
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["mine", "public"]
    );
    assert_eq!(
        err(c.pool_delete("public")),
        "pool public has 2 allocated floating IPs; delete them first"
    );
    assert_eq!(err(c.pool_delete("nope")), "pool nope does not exist");
    c.pool_delete("mine").unwrap();
    assert_eq!(env.trie().len(), 4, "only public's entries are left");
    c.ip_delete(ip("203.0.113.1"), None).unwrap();
    c.ip_delete(ip("203.0.113.2"), None).unwrap();
    c.pool_delete("public").unwrap();
    assert!(env.trie().is_empty());
    assert!(c.pool_list().unwrap().is_empty());
}

#[test]
fn pools_work_without_the_data_plane() {
    let env = Env::new("ctl-pool-detached");
    let mut c = env.detached();
    c.pool_create("public", &ranges(&["203.0.113.0/29"], &[]), None, None)
        .unwrap();
    let fip = c
        .ip_create("public", None, Some("demo"), Some("web"))
        .unwrap();
    assert_eq!(fip.floating_ip_address, ip("203.0.113.1"));
    assert_eq!(fip.status, IpStatus::Down);
    c.ip_delete(ip("203.0.113.1"), None).unwrap();
    c.pool_delete("public").unwrap();
    assert!(env.trie().is_empty() && env.map_pairs().is_empty());
    assert_eq!(env.map_generation(), 0, "the maps were never touched");
}

#[test]
fn ip_create_rules() {
    let env = Env::new("ctl-ip-create");
    let mut c = with_pools(&env);
    let a = c
        .ip_create("small", None, Some("demo"), Some("front door"))
        .unwrap();
    assert_eq!(a.floating_ip_address, ip("192.0.2.1"));
    assert_eq!(a.project.as_deref(), Some("demo"));
    assert_eq!(a.description.as_deref(), Some("front door"));
    assert_eq!(
        c.ip_create("small", None, None, None)
            .unwrap()
            .floating_ip_address,
        ip("192.0.2.2")
    );
    assert_eq!(
        err(c.ip_create("small", None, None, None)),
        "no more floating IPs in pool small"
    );
    assert_eq!(
        err(c.ip_create("nope", None, None, None)),
        "pool nope does not exist"
    );

    assert_eq!(
        c.ip_create("public", Some(ip("203.0.113.5")), None, None)
            .unwrap()
            .floating_ip_address,
        ip("203.0.113.5")
    );
    assert_eq!(
        err(c.ip_create("public", Some(ip("203.0.113.5")), None, None)),
        "floating IP 203.0.113.5 is already allocated"
    );
    assert_eq!(
        err(c.ip_create("public", Some(ip("203.0.113.7")), None, None)),
        "203.0.113.7 is not an address of pool public (203.0.113.0/29)"
    );
    assert!(
        err(c.ip_create("public", Some(ip("192.0.2.9")), None, None))
            .contains("not an address of pool")
    );

    c.quota_set("demo", 2).unwrap();
    c.ip_create("public", None, Some("demo"), None).unwrap();
    assert_eq!(
        err(c.ip_create("public", None, Some("demo"), None)),
        "project demo is at its quota: 2 of 2 floating IPs in use"
    );
    // Other projects and unscoped allocation are unaffected; no quota row = unlimited.
    c.ip_create("public", None, Some("other"), None).unwrap();
    c.ip_create("public", None, None, None).unwrap();
    assert_eq!(
        c.quota_show("demo").unwrap(),
        Quota {
            project: "demo".into(),
            used: 2,
            limit: Some(2)
        }
    );
    assert_eq!(
        c.quota_show("nobody").unwrap(),
        Quota {
            project: "nobody".into(),
            used: 0,
            limit: None
        }
    );
    assert_eq!(c.quota_list().unwrap().len(), 2);
    c.quota_set("demo", 3).unwrap();
    c.ip_create("public", None, Some("demo"), None).unwrap();

    let listed = |c: &mut Control, q: IpQuery| c.ip_list(&q).unwrap().len();
    assert_eq!(listed(&mut c, IpQuery::default()), 7);
    assert_eq!(
        listed(
            &mut c,
            IpQuery {
                project: Some("demo"),
                ..Default::default()
            }
        ),
        3
    );
    assert_eq!(
        listed(
            &mut c,
            IpQuery {
                pool: Some("small"),
                ..Default::default()
            }
        ),
        2
    );
    assert_eq!(
        listed(
            &mut c,
            IpQuery {
                status: Some(IpStatus::Active),
                ..Default::default()
            }
        ),
        0
    );
    assert_eq!(
        err(c.ip_list(&IpQuery {
            pool: Some("nope"),
            ..Default::default()
        })),
        "pool nope does not exist"
    );
    assert!(
        env.map_pairs().is_empty() && env.map_generation() == 0,
        "allocation never touches the association maps"
    );
}

#[test]
fn associate_checks_and_moves() {
    let env = Env::new("ctl-assoc");
    let mut c = with_pools(&env);
    c.ip_create("public", None, Some("demo"), None).unwrap(); // .1
    c.ip_create("public", None, Some("demo"), None).unwrap(); // .2
    c.ip_create("public", None, Some("other"), None).unwrap(); // .3

    let r = c
        .ip_associate(&Associate {
            instance: Some("web-1"),
            project: Some("demo"),
            ..assoc("203.0.113.1", "10.0.0.5")
        })
        .unwrap();
    assert_eq!(r.status, IpStatus::Active);
    assert_eq!(r.fixed_ip_address, Some(ip("10.0.0.5")));
    assert_eq!(r.instance.as_deref(), Some("web-1"));
    env.assert_in_step();
    assert_eq!(env.db_generation(), 1);

    // Another project's address looks exactly like a missing one.
    let foreign = Associate {
        project: Some("demo"),
        ..assoc("203.0.113.3", "10.0.0.9")
    };
    assert_eq!(
        err(c.ip_associate(&foreign)),
        "floating IP 203.0.113.3 not found"
    );
    assert_eq!(
        err(c.ip_associate(&assoc("203.0.113.4", "10.0.0.9"))),
        "floating IP 203.0.113.4 not found"
    );
    assert_eq!(
        err(c.ip_show(ip("203.0.113.3"), Some("demo"))),
        "floating IP 203.0.113.3 not found"
    );
    assert_eq!(
        err(c.ip_associate(&assoc("203.0.113.2", "10.0.0.5"))),
        "fixed IP 10.0.0.5 already has floating IP 203.0.113.1"
    );
    assert_eq!(
        err(c.ip_associate(&assoc("203.0.113.2", "192.0.2.3"))),
        "fixed IP 192.0.2.3 lies in floating IP pool small: an instance on the external network needs no floating IP"
    );
    assert_eq!(
        err(c.ip_associate(&assoc("203.0.113.2", "0.0.0.0"))),
        "fixed IP 0.0.0.0 is not a unicast host address"
    );
    assert_eq!(
        err(c.ip_associate(&assoc("203.0.113.1", "10.0.0.6"))),
        "floating IP 203.0.113.1 is already associated with 10.0.0.5; use --force to move it"
    );
    env.assert_in_step();
    assert_eq!(env.db_generation(), 1, "failed commands change nothing");

    // Same pair again: nothing to do.
    c.ip_associate(&assoc("203.0.113.1", "10.0.0.5")).unwrap();
    assert_eq!((env.db_generation(), env.map_generation()), (1, 1));

    let moved = c
        .ip_associate(&Associate {
            force: true,
            ..assoc("203.0.113.1", "10.0.0.6")
        })
        .unwrap();
    assert_eq!(moved.fixed_ip_address, Some(ip("10.0.0.6")));
    assert_eq!(
        env.dp().fixed_of(ip("203.0.113.1")).unwrap(),
        Some(ip("10.0.0.6"))
    );
    assert_eq!(env.dp().floating_of(ip("10.0.0.5")).unwrap(), None);
    env.assert_in_step();

    // The freed fixed IP can take another floating IP.
    c.ip_associate(&assoc("203.0.113.2", "10.0.0.5")).unwrap();
    env.assert_in_step();

    let d = c.ip_disassociate(ip("203.0.113.2"), Some("demo")).unwrap();
    assert_eq!(
        (d.status, d.fixed_ip_address, d.instance),
        (IpStatus::Down, None, None)
    );
    assert_eq!(
        c.ip_disassociate(ip("203.0.113.2"), None).unwrap().status,
        IpStatus::Down
    );
    assert_eq!(
        err(c.ip_disassociate(ip("203.0.113.1"), Some("other"))),
        "floating IP 203.0.113.1 not found"
    );
    env.assert_in_step();

    // Deleting an associated address disassociates it first.
    let deleted = c.ip_delete(ip("203.0.113.1"), Some("demo")).unwrap();
    assert_eq!(deleted.fixed_ip_address, Some(ip("10.0.0.6")));
    env.assert_in_step();
    assert!(env.map_pairs().is_empty());
    assert_eq!(
        err(c.ip_delete(ip("203.0.113.1"), None)),
        "floating IP 203.0.113.1 not found"
    );
}

#[test]
fn association_needs_the_data_plane_first() {
    let env = Env::new("ctl-detached");
    with_pools(&env);
    let mut c = env.detached();
    c.ip_create("public", None, None, None).unwrap();
    let not_attached = format!(
        "the data plane is not attached (no pinned maps in {}); run `floatip attach --external IFACE \
         --internal IFACE` first",
        env.bpffs.join("absent").display()
    );
    // Checked before anything else, even the existence of the address.
    assert_eq!(
        err(c.ip_associate(&assoc("203.0.113.4", "10.0.0.5"))),
        not_attached
    );
    assert_eq!(
        err(c.ip_associate(&assoc("203.0.113.1", "10.0.0.5"))),
        not_attached
    );
    assert_eq!(err(c.ip_associate_bulk(&[], None)), not_attached);
    assert!(env.db_pairs().is_empty());

    let mut a = env.attached();
    a.ip_associate(&assoc("203.0.113.1", "10.0.0.5")).unwrap();
    assert_eq!(
        a.ip_show(ip("203.0.113.1"), None).unwrap().status,
        IpStatus::Active
    );
    // Seen without a data plane the association is not carried: DETACHED, not ACTIVE.
    assert_eq!(
        c.ip_show(ip("203.0.113.1"), None).unwrap().status,
        IpStatus::Detached
    );
    // Disassociating and deleting work on the database alone; the next attach applies them.
    let d = c.ip_disassociate(ip("203.0.113.1"), None).unwrap();
    assert_eq!(d.status, IpStatus::Down);
    assert!(env.db_pairs().is_empty());
    assert_eq!(env.db_generation(), 2);
    a.ip_associate(&assoc("203.0.113.1", "10.0.0.5")).unwrap();
    c.ip_delete(ip("203.0.113.1"), None).unwrap();
    assert!(env.db_pairs().is_empty());
    assert!(c.ip_list(&IpQuery::default()).unwrap().is_empty());
}

#[test]
fn failed_map_update_rolls_back_and_marks_the_maps() {
    // Maps for one pair, filled by a plumbing pair the database does not know and that left
    // the generation as it was: the associate fails in the maps themselves (E2BIG).
    let env = Env::with_capacity("ctl-fail", 1);
    let mut c = with_pools(&env);
    c.ip_create("public", None, None, None).unwrap();
    c.ip_create("public", None, None, None).unwrap();
    env.dp()
        .nat_add(ip("203.0.113.5"), ip("10.0.0.50"))
        .unwrap();
    assert!(
        err(c.ip_associate(&assoc("203.0.113.1", "10.0.0.5")))
            .starts_with("cannot map fixed IP 10.0.0.5")
    );
    assert!(env.db_pairs().is_empty());
    assert_eq!(env.db_generation(), 0);
    assert_eq!(env.map_generation(), GENERATION_DIRTY);
    assert_eq!(env.map_pairs(), [(ip("203.0.113.5"), ip("10.0.0.50"))]);
    // The next command compares in full, removes the stray pair and carries on.
    c.ip_associate(&assoc("203.0.113.1", "10.0.0.5")).unwrap();
    env.assert_in_step();
    assert_eq!(env.db_generation(), 1);
}

#[test]
fn drift_is_repaired_before_the_next_change() {
    let env = Env::new("ctl-drift");
    let mut c = with_pools(&env);
    for _ in 0..5 {
        c.ip_create("public", None, None, None).unwrap();
    }
    for (f, x) in [
        ("203.0.113.1", "10.0.0.1"),
        ("203.0.113.2", "10.0.0.2"),
        ("203.0.113.3", "10.0.0.3"),
    ] {
        c.ip_associate(&assoc(f, x)).unwrap();
    }
    env.assert_in_step();
    {
        // Tamper: one missing, one wrong, one half pair that steals a wanted fixed IP, and a
        // generation that no longer matches.
        let mut dp = env.dp();
        dp.nat_del(ip("203.0.113.1")).unwrap();
        dp.nat_del(ip("203.0.113.2")).unwrap();
        dp.nat_add(ip("203.0.113.2"), ip("10.0.0.99")).unwrap();
        dp.insert_half_pair(ip("203.0.113.5"), ip("10.0.0.3"))
            .unwrap();
        dp.set_generation(77).unwrap();
    }
    c.ip_associate(&assoc("203.0.113.4", "10.0.0.4")).unwrap();
    env.assert_in_step();
    assert_eq!(env.map_pairs().len(), 4);

    // Generation equal: no comparison at all (the cost of an associate stays constant), so a
    // pair written behind the control plane's back without marking the maps stays.
    env.dp()
        .nat_add(ip("203.0.113.6"), ip("10.0.0.66"))
        .unwrap();
    c.ip_disassociate(ip("203.0.113.4"), None).unwrap();
    assert!(
        env.map_pairs()
            .contains(&(ip("203.0.113.6"), ip("10.0.0.66")))
    );

    // Marked dirty (a crash after the commit but before the final mark): compared, repaired.
    env.dp().set_generation(GENERATION_DIRTY).unwrap();
    c.ip_associate(&assoc("203.0.113.4", "10.0.0.4")).unwrap();
    env.assert_in_step();
}

#[test]
fn repair_counts_floating_ips() {
    let env = Env::new("ctl-repair");
    let mut c = with_pools(&env);
    for _ in 0..3 {
        c.ip_create("public", None, None, None).unwrap();
    }
    c.ip_associate(&assoc("203.0.113.1", "10.0.0.1")).unwrap();
    c.ip_associate(&assoc("203.0.113.2", "10.0.0.2")).unwrap();
    let mut dp = env.dp();
    dp.nat_del(ip("203.0.113.1")).unwrap();
    dp.nat_del(ip("203.0.113.2")).unwrap();
    dp.nat_add(ip("203.0.113.3"), ip("10.0.0.3")).unwrap();
    let mut store = Store::open(&env.path).unwrap();
    let n = store.write(|tx| repair(tx, &mut dp)).unwrap();
    assert_eq!(n, 3);
    assert_eq!(env.map_pairs(), env.db_pairs());
    assert_eq!(store.write(|tx| repair(tx, &mut dp)).unwrap(), 0);
}

#[test]
fn bulk_association() {
    // Room for five pairs, so that a batch can overflow half way.
    let env = Env::with_capacity("ctl-bulk", 5);
    let mut c = with_pools(&env);
    for _ in 0..6 {
        c.ip_create("public", None, Some("demo"), None).unwrap();
    }
    c.ip_associate(&assoc("203.0.113.6", "10.0.0.6")).unwrap();
    let file = "# bulk\n203.0.113.1 10.0.0.1 web-1\n203.0.113.2 10.0.0.2\n203.0.113.6 10.0.0.6\n";
    let entries = parse_bulk(file).unwrap();
    let out = c.ip_associate_bulk(&entries, Some("demo")).unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].instance.as_deref(), Some("web-1"));
    assert!(out.iter().all(|r| r.status == IpStatus::Active));
    assert_eq!(env.map_pairs().len(), 3);
    env.assert_in_step();
    let g = env.db_generation();

    let bad = parse_bulk("203.0.113.3 10.0.0.3\n203.0.113.4 10.0.0.1\n").unwrap();
    assert_eq!(
        err(c.ip_associate_bulk(&bad, None)),
        "line 2: fixed IP 10.0.0.1 already has floating IP 203.0.113.1"
    );
    let bad = parse_bulk("203.0.113.3 10.0.0.3\n\n203.0.113.1 10.0.0.9\n").unwrap();
    assert_eq!(
        err(c.ip_associate_bulk(&bad, None)),
        "line 3: floating IP 203.0.113.1 is already associated with 10.0.0.1"
    );
    let bad = parse_bulk("203.0.113.3 203.0.113.4\n").unwrap();
    assert!(
        err(c.ip_associate_bulk(&bad, None))
            .starts_with("line 1: fixed IP 203.0.113.4 lies in floating IP pool public")
    );
    let bad = parse_bulk("203.0.113.3 10.0.0.3\n").unwrap();
    assert_eq!(
        err(c.ip_associate_bulk(&bad, Some("other"))),
        "line 1: floating IP 203.0.113.3 not found"
    );
    assert_eq!(env.db_generation(), g, "nothing of a failed file is kept");
    env.assert_in_step();

    // The maps fill up half way through the batch: all of it is taken back out.
    let good =
        parse_bulk("203.0.113.3 10.0.0.3\n203.0.113.4 10.0.0.4\n203.0.113.5 10.0.0.5\n").unwrap();
    assert!(err(c.ip_associate_bulk(&good, None)).starts_with("cannot map fixed IP 10.0.0.5"));
    assert_eq!(env.map_pairs(), env.db_pairs());
    assert_eq!(
        env.map_generation(),
        GENERATION_DIRTY,
        "compared in full next time"
    );
    let fits = parse_bulk("203.0.113.3 10.0.0.3\n203.0.113.4 10.0.0.4\n").unwrap();
    c.ip_associate_bulk(&fits, None).unwrap();
    env.assert_in_step();
    assert_eq!(env.map_pairs().len(), 5);
}

#[test]
fn resync_fills_fresh_maps() {
    let mut env = Env::new("ctl-resync");
    let mut c = with_pools(&env);
    c.ip_create("public", None, None, None).unwrap();
    c.ip_associate(&assoc("203.0.113.1", "10.0.0.1")).unwrap();
    drop(c);
    env.fresh_maps();
    let mut c = env.attached();
    assert_eq!(c.resync().unwrap(), 1);
    env.assert_in_step();
    assert_eq!(env.trie().len(), 1 + 2 + 1 + 2);
}

#[test]
fn gateway_addresses_include_loopback() {
    let addrs = iface::addresses().unwrap();
    assert!(addrs.iter().any(|(_, ip)| ip.is_loopback()), "{addrs:?}");
}

#[test]
fn json_keys_are_stable() {
    let f = FloatingIp {
        id: 1,
        floating_ip_address: ip("203.0.113.1"),
        fixed_ip_address: None,
        pool: "public".into(),
        project: Some("demo".into()),
        instance: None,
        status: IpStatus::Down,
        description: None,
        tags: vec!["web".into()],
        created_at: "2024-01-01T00:00:00Z".into(),
    };
    assert_eq!(
        serde_json::to_string(&f).unwrap(),
        r#"{"id":1,"floating_ip_address":"203.0.113.1","fixed_ip_address":null,"pool":"public","project":"demo","instance":null,"status":"DOWN","description":null,"tags":["web"],"created_at":"2024-01-01T00:00:00Z"}"#
    );
}

#[test]
fn topology_is_validated() {
    let env = Env::new("ctl-topology");
    let mut c = with_pools(&env);
    assert_eq!(
        err(c.pool_create("tenant", &ranges(&["10.1.0.0/24"], &[]), None, None)),
        "pool tenant (10.1.0.0/24) overlaps 10.0.0.0/8, a subnet routed through the internal \
         interface int0"
    );
    assert!(
        err(c.pool_create("lo", &ranges(&["127.1.0.0/24"], &[]), None, None))
            .contains("127.0.0.0/8")
    );
    assert_eq!(
        err(c.pool_create("far", &ranges(&["192.0.2.64/28"], &[]), Some("int0"), None)),
        "int0 is not an external interface of this gateway (attached: eth0)"
    );
    c.ip_create("public", None, None, None).unwrap();
    assert_eq!(
        err(c.ip_associate(&assoc("203.0.113.1", "10.255.255.255"))),
        "fixed IP 10.255.255.255 is the broadcast address of 10.0.0.0/8 on int0"
    );
    assert_eq!(
        err(c.ip_associate(&assoc("203.0.113.1", "10.255.0.1"))),
        "10.255.0.1 is an address of the gateway's interface int0"
    );
    assert!(env.db_pairs().is_empty() && env.map_pairs().is_empty());
}

/// The tenant subnets are one list: a subnet routed through the internal NIC (behind a tenant
/// router) is refused as a pool range, checked for its network and broadcast addresses, and
/// offered to ports, exactly as the connected one.
#[test]
fn tenant_subnets_are_one_list() {
    let env = Env::new("ctl-subnets");
    let st = Command::new("ip")
        .args("route add 172.16.0.0/16 via 10.255.0.254 dev int0".split(' '))
        .status()
        .unwrap();
    assert!(st.success());
    let mut c = with_pools(&env);
    let nets = c.internal_networks().unwrap();
    let view: Vec<(String, String, Option<Ipv4Addr>)> = nets
        .iter()
        .flat_map(|n| {
            n.subnets.iter().map(|s| {
                (
                    n.name.clone(),
                    format!("{}/{}", s.network, s.prefix_len),
                    s.gateway,
                )
            })
        })
        .collect();
    assert_eq!(
        view,
        [
            ("int0".into(), "10.0.0.0/8".into(), Some(ip("10.255.0.1"))),
            ("int0".into(), "172.16.0.0/16".into(), None),
        ]
    );
    assert_eq!(
        err(c.pool_create("behind", &ranges(&["172.16.5.0/24"], &[]), None, None)),
        "pool behind (172.16.5.0/24) overlaps 172.16.0.0/16, a subnet routed through the internal \
         interface int0"
    );
    c.ip_create("public", None, None, None).unwrap();
    assert_eq!(
        err(c.ip_associate(&assoc("203.0.113.1", "172.16.255.255"))),
        "fixed IP 172.16.255.255 is the broadcast address of 172.16.0.0/16 on int0"
    );
    let port = c
        .port_create(&ports::NewPort {
            network: "int0",
            fixed_ip: Some(ip("172.16.0.20")),
            name: "web",
            project: "p1",
            ..Default::default()
        })
        .unwrap();
    assert_eq!(port.fixed_ip, ip("172.16.0.20"));
}

/// A pool's trie entries carry its external NIC (the only one answering ARP for it); a pool
/// naming none carries 0 (every external NIC).
#[test]
fn pool_entries_carry_their_nic() {
    let env = Env::new("ctl-pool-nic");
    let _c = with_pools(&env);
    let eth0 = iface::index("eth0").unwrap();
    let mut nics: Vec<(String, u32)> = env
        .dp()
        .pool_prefixes()
        .unwrap()
        .into_iter()
        .map(|(a, l, _, nic)| (format!("{a}/{l}"), nic))
        .collect();
    nics.sort();
    assert_eq!(
        nics,
        [
            ("192.0.2.0/30".into(), 0),
            ("192.0.2.0/32".into(), 0),
            ("192.0.2.3/32".into(), 0),
            ("203.0.113.0/29".into(), eth0),
            ("203.0.113.0/32".into(), eth0),
            ("203.0.113.7/32".into(), eth0),
        ]
    );
}
