//! One conformance suite for both store backends: every test body runs once on SQLite (a
//! database in a temporary directory) and once on etcd (a real single-member cluster of
//! `tests::etcd`, started per test). What the control layer relies on must hold on both:
//! unique allocation under concurrency, 1:1 association under concurrency, quotas, project
//! scoping, ids, ports, users, tags, and every error the SQLite store raises, with the same
//! message. Where etcd is not installed the etcd half fails (`cargo xtask setup` installs it).
//!
//! Concurrent tests open one store per thread, i.e. one SQLite connection or one etcd client
//! each, as separate processes would.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Barrier},
};

use anyhow::{Result, bail};
use floatip::{
    addr::PoolRanges,
    control::Control,
    error::{ErrorKind, kind_of},
    store::{IpFilter, PortRow, QuotaRow, Store, StoreSpec},
};
use tests::etcd::Cluster;

/// A store of one backend, empty, removed at the end of the test.
struct Env {
    spec: StoreSpec,
    _etcd: Option<Cluster>,
    dir: PathBuf,
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Etcd,
}

impl Env {
    fn new(backend: Backend, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "floatip-conformance-{tag}-{backend:?}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        match backend {
            Backend::Sqlite => Self {
                spec: StoreSpec::Sqlite(dir.join("state.db")),
                _etcd: None,
                dir,
            },
            Backend::Etcd => {
                let cluster = Cluster::single().unwrap_or_else(|e| panic!("{e:#}"));
                Self {
                    spec: StoreSpec::parse(&cluster.url()).unwrap(),
                    _etcd: Some(cluster),
                    dir,
                }
            }
        }
    }

    fn open(&self) -> Store {
        Store::open_spec(&self.spec, true).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A control layer over a new connection, with no data plane (a bpffs path that holds
    /// nothing).
    fn control(&self) -> Control {
        Control::new(self.open(), &self.dir.join("no-bpffs"), None)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn add_pool(store: &mut Store, name: &str, range: &str) -> PoolRanges {
    let ranges = PoolRanges::parse(&[range], &[]).unwrap();
    store
        .write(|tx| {
            tx.pool_insert(
                name,
                &ranges.ranges_text(),
                &ranges.excludes_text(),
                None,
                None,
            )
        })
        .unwrap();
    ranges
}

/// What `ip create` does in the store: the lowest free address.
fn allocate(
    store: &mut Store,
    pool: &str,
    ranges: &PoolRanges,
    project: Option<&str>,
) -> Result<Ipv4Addr> {
    store.write(|tx| {
        let taken = tx.ip_addresses_in_pool(pool)?;
        let Some(a) = ranges.lowest_free(&taken) else {
            bail!("no more floating IPs in pool {pool}")
        };
        tx.ip_insert(a, pool, project, None)?;
        Ok(a)
    })
}

/// The error's own message (SQLite's chain adds its extended code below it).
fn err<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.expect_err("must fail").to_string()
}

/// Every test body, run against both backends.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::Backend::Sqlite) })*
        }
        mod etcd {
            $(#[test] fn $name() { super::$name(super::Backend::Etcd) })*
        }
    };
}

conformance!(
    pools_and_lowest_allocation,
    constraint_errors_and_rollback,
    generation_bumps_once_per_association_change,
    quotas_and_project_scoping,
    concurrent_allocation_hands_out_each_address_once,
    concurrent_association_of_one_fixed_ip_has_one_winner,
    ids_ports_users_and_tags,
    identity_is_fixed,
);

fn pools_and_lowest_allocation(b: Backend) {
    let env = Env::new(b, "alloc");
    let mut store = env.open();
    let ranges = add_pool(&mut store, "public", "203.0.113.0/29");
    let pool = store.read(|tx| tx.pool_get("public")).unwrap().unwrap();
    assert_eq!(pool.ranges, "203.0.113.0/29");
    assert!(pool.created_at.ends_with('Z') && pool.created_at.len() == 20);
    assert_eq!(
        err(store.write(|tx| tx.pool_insert("public", "10.0.0.0/8", "", None, None))),
        "UNIQUE constraint failed: pools.name"
    );
    let got: Vec<_> = (0..3)
        .map(|_| allocate(&mut store, "public", &ranges, Some("demo")).unwrap())
        .collect();
    assert_eq!(
        got,
        [ip("203.0.113.1"), ip("203.0.113.2"), ip("203.0.113.3")]
    );
    // A freed address is the lowest again.
    assert!(store.write(|tx| tx.ip_delete(ip("203.0.113.2"))).unwrap());
    assert!(!store.write(|tx| tx.ip_delete(ip("203.0.113.2"))).unwrap());
    assert_eq!(
        allocate(&mut store, "public", &ranges, None).unwrap(),
        ip("203.0.113.2")
    );
    for _ in 0..3 {
        allocate(&mut store, "public", &ranges, None).unwrap();
    }
    assert_eq!(
        err(allocate(&mut store, "public", &ranges, None)),
        "no more floating IPs in pool public"
    );
    assert_eq!(store.read(|tx| tx.ip_count_in_pool("public")).unwrap(), 6);
    // Not empty: refused; empty: deleted once.
    assert_eq!(
        err(store.write(|tx| tx.pool_delete("public"))),
        "FOREIGN KEY constraint failed"
    );
    add_pool(&mut store, "spare", "198.51.100.0/30");
    assert!(
        store
            .write(|tx| tx.pool_set_description("spare", Some("d")))
            .unwrap()
    );
    assert!(
        !store
            .write(|tx| tx.pool_set_description("none", None))
            .unwrap()
    );
    assert_eq!(
        store.read(|tx| tx.pool_list()).unwrap()[1]
            .description
            .as_deref(),
        Some("d")
    );
    assert!(store.write(|tx| tx.pool_delete("spare")).unwrap());
    assert!(!store.write(|tx| tx.pool_delete("spare")).unwrap());
    let names: Vec<String> = store
        .read(|tx| tx.pool_list())
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["public"]);
    // The pool's addresses, ascending, seen by a second connection.
    let mut other = env.open();
    assert_eq!(
        other.read(|tx| tx.ip_addresses_in_pool("public")).unwrap(),
        (1..=6)
            .map(|i| Ipv4Addr::new(203, 0, 113, i))
            .collect::<Vec<_>>()
    );
}

fn constraint_errors_and_rollback(b: Backend) {
    let env = Env::new(b, "errors");
    let mut store = env.open();
    add_pool(&mut store, "public", "203.0.113.0/24");
    for a in ["203.0.113.5", "203.0.113.6"] {
        store
            .write(|tx| tx.ip_insert(ip(a), "public", None, None))
            .unwrap();
    }
    assert_eq!(
        err(store.write(|tx| tx.ip_insert(ip("203.0.113.5"), "public", None, None))),
        "UNIQUE constraint failed: floating_ips.address"
    );
    assert_eq!(
        err(store.write(|tx| tx.ip_insert(ip("203.0.113.9"), "nope", None, None))),
        "FOREIGN KEY constraint failed"
    );
    store
        .write(|tx| tx.ip_set_association(ip("203.0.113.5"), Some(ip("10.0.0.5")), Some("vm")))
        .unwrap();
    // Re-setting the same pair is no conflict with itself.
    store
        .write(|tx| tx.ip_set_association(ip("203.0.113.5"), Some(ip("10.0.0.5")), Some("vm")))
        .unwrap();
    assert_eq!(
        err(store.write(|tx| tx.ip_set_association(ip("203.0.113.6"), Some(ip("10.0.0.5")), None))),
        "UNIQUE constraint failed: floating_ips.fixed_ip"
    );
    assert_eq!(
        err(store.write(|tx| tx.ip_set_association(ip("203.0.113.7"), None, None))),
        "floating IP 203.0.113.7 not found"
    );
    let holder = store
        .read(|tx| tx.ip_by_fixed(ip("10.0.0.5")))
        .unwrap()
        .unwrap();
    assert_eq!(
        (holder.address, holder.instance.as_deref()),
        (ip("203.0.113.5"), Some("vm"))
    );
    assert_eq!(
        store.read(|tx| tx.ip_by_fixed(ip("10.0.0.6"))).unwrap(),
        None
    );
    // An error in the closure undoes everything the closure did.
    let r: Result<()> = store.write(|tx| {
        tx.ip_insert(ip("203.0.113.7"), "public", None, None)?;
        tx.ip_set_association(ip("203.0.113.6"), Some(ip("10.0.0.6")), None)?;
        tx.quota_set("demo", 1)?;
        bail!("map update failed")
    });
    assert_eq!(err(r), "map update failed");
    let mut other = env.open();
    other
        .read(|tx| {
            assert_eq!(tx.ip_get(ip("203.0.113.7"))?, None);
            assert_eq!(tx.ip_get(ip("203.0.113.6"))?.unwrap().fixed_ip, None);
            assert_eq!(tx.quota_get("demo")?, None);
            assert_eq!(tx.generation()?, 2);
            Ok(())
        })
        .unwrap();
    // The control layer's errors carry their kind on both backends.
    let mut control = env.control();
    let e = control.ip_create("nope", None, None, None).unwrap_err();
    assert_eq!(kind_of(&e), ErrorKind::NotFound, "{e:#}");
    let e = control
        .ip_create("public", Some(ip("203.0.113.5")), None, None)
        .unwrap_err();
    assert_eq!(kind_of(&e), ErrorKind::Conflict, "{e:#}");
    let e = control
        .ip_create("public", Some(ip("198.51.100.1")), None, None)
        .unwrap_err();
    assert_eq!(kind_of(&e), ErrorKind::Invalid, "{e:#}");
    let e = control.pool_delete("public").unwrap_err();
    assert_eq!(kind_of(&e), ErrorKind::Conflict, "{e:#}");
    assert_eq!(
        format!("{e:#}"),
        "pool public has 2 allocated floating IPs; delete them first"
    );
}

fn generation_bumps_once_per_association_change(b: Backend) {
    let env = Env::new(b, "gen");
    let mut store = env.open();
    add_pool(&mut store, "public", "203.0.113.0/24");
    let g = |s: &mut Store| s.read(|tx| tx.generation()).unwrap();
    assert_eq!(g(&mut store), 0);
    for a in ["203.0.113.5", "203.0.113.6"] {
        store
            .write(|tx| tx.ip_insert(ip(a), "public", None, None))
            .unwrap();
    }
    assert_eq!(g(&mut store), 0, "allocation does not change associations");
    store
        .write(|tx| {
            tx.ip_set_association(ip("203.0.113.5"), Some(ip("10.0.0.5")), None)?;
            tx.ip_set_association(ip("203.0.113.6"), Some(ip("10.0.0.6")), None)?;
            assert_eq!(tx.generation()?, 1, "visible inside the transaction");
            Ok(())
        })
        .unwrap();
    assert_eq!(g(&mut store), 1);
    assert_eq!(
        store.read(|tx| tx.associations()).unwrap(),
        [
            (ip("203.0.113.5"), ip("10.0.0.5")),
            (ip("203.0.113.6"), ip("10.0.0.6"))
        ]
    );
    let _ = store.write(|tx| -> Result<()> {
        tx.ip_set_association(ip("203.0.113.5"), None, None)?;
        bail!("no")
    });
    assert_eq!(g(&mut store), 1, "rolled back: not bumped");
    store.write(|tx| tx.ip_delete(ip("203.0.113.6"))).unwrap();
    assert_eq!(g(&mut store), 2, "deleting an associated address bumps");
    store
        .write(|tx| tx.ip_set_association(ip("203.0.113.5"), None, None))
        .unwrap();
    store.write(|tx| tx.ip_delete(ip("203.0.113.5"))).unwrap();
    assert_eq!(g(&mut store), 3, "deleting an unassociated one does not");
}

fn quotas_and_project_scoping(b: Backend) {
    let env = Env::new(b, "quota");
    let mut control = env.control();
    let ranges = PoolRanges::parse(&["203.0.113.0/24"], &[]).unwrap();
    control.pool_create("public", &ranges, None, None).unwrap();
    control.quota_set("demo", 2).unwrap();
    control.quota_set("idle", 0).unwrap();
    let a = control
        .ip_create("public", None, Some("demo"), None)
        .unwrap();
    let c = control
        .ip_create("public", None, Some("demo"), None)
        .unwrap();
    let e = control
        .ip_create("public", None, Some("demo"), None)
        .unwrap_err();
    assert_eq!(kind_of(&e), ErrorKind::Conflict);
    assert_eq!(
        format!("{e:#}"),
        "project demo is at its quota: 2 of 2 floating IPs in use"
    );
    let e = control
        .ip_create("public", None, Some("idle"), None)
        .unwrap_err();
    assert_eq!(kind_of(&e), ErrorKind::Conflict, "{e:#}");
    let other = control
        .ip_create("public", None, Some("other"), None)
        .unwrap();
    control.ip_create("public", None, None, None).unwrap();
    // Project scoping: another project's address is invisible to it.
    let e = control
        .ip_show(other.floating_ip_address, Some("demo"))
        .unwrap_err();
    assert_eq!(kind_of(&e), ErrorKind::NotFound, "{e:#}");
    let e = control
        .ip_delete(a.floating_ip_address, Some("other"))
        .unwrap_err();
    assert_eq!(kind_of(&e), ErrorKind::NotFound, "{e:#}");
    assert_eq!(
        control
            .ip_show(a.floating_ip_address, Some("demo"))
            .unwrap()
            .id,
        a.id
    );
    // Releasing one frees quota.
    control
        .ip_delete(c.floating_ip_address, Some("demo"))
        .unwrap();
    control
        .ip_create("public", None, Some("demo"), None)
        .unwrap();
    let mut store = env.open();
    store
        .read(|tx| {
            let demo = IpFilter {
                project: Some("demo"),
                ..Default::default()
            };
            assert_eq!(tx.ip_list(&demo)?.len(), 2);
            assert_eq!(tx.ip_list(&IpFilter::default())?.len(), 4);
            assert_eq!(
                tx.quota_row("demo")?,
                QuotaRow {
                    project: "demo".into(),
                    used: 2,
                    limit: Some(2)
                }
            );
            let projects: Vec<String> = tx.quota_list()?.into_iter().map(|q| q.project).collect();
            assert_eq!(projects, ["demo", "idle", "other"]);
            assert_eq!(tx.project_names()?, ["demo", "idle", "other"]);
            Ok(())
        })
        .unwrap();
    assert!(store.write(|tx| tx.quota_delete("demo")).unwrap());
    assert!(!store.write(|tx| tx.quota_delete("demo")).unwrap());
    control
        .ip_create("public", None, Some("demo"), None)
        .unwrap();
}

fn concurrent_allocation_hands_out_each_address_once(b: Backend) {
    let env = Arc::new(Env::new(b, "race"));
    let mut store = env.open();
    // 10 usable addresses; 16 allocators at once, each with its own connection.
    let ranges = Arc::new(add_pool(&mut store, "public", "198.51.100.1-198.51.100.10"));
    drop(store);
    let threads = 16;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (env, ranges, barrier) = (env.clone(), ranges.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut store = env.open();
                barrier.wait();
                allocate(&mut store, "public", &ranges, None)
            })
        })
        .collect();
    let results: Vec<Result<Ipv4Addr>> = handles.into_iter().map(|t| t.join().unwrap()).collect();
    let won: BTreeSet<Ipv4Addr> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        10,
        "{results:?}"
    );
    assert_eq!(won.len(), 10, "an address handed out twice: {results:?}");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(e.to_string(), "no more floating IPs in pool public");
    }
    let stored = env
        .open()
        .read(|tx| tx.ip_addresses_in_pool("public"))
        .unwrap();
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), won);
}

fn concurrent_association_of_one_fixed_ip_has_one_winner(b: Backend) {
    let env = Arc::new(Env::new(b, "assoc"));
    let mut store = env.open();
    add_pool(&mut store, "public", "203.0.113.0/24");
    let threads = 8u8;
    for i in 0..threads {
        store
            .write(|tx| tx.ip_insert(Ipv4Addr::new(203, 0, 113, 10 + i), "public", None, None))
            .unwrap();
    }
    drop(store);
    let fixed = ip("10.0.0.5");
    for checked in [true, false] {
        // Each thread associates its own floating IP with the same fixed IP: with the
        // control layer's check first (`checked`), and relying on the store's constraint.
        let barrier = Arc::new(Barrier::new(threads.into()));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (env, barrier) = (env.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut store = env.open();
                    let floating = Ipv4Addr::new(203, 0, 113, 10 + i);
                    barrier.wait();
                    store.write(|tx| {
                        if checked && let Some(h) = tx.ip_by_fixed(fixed)? {
                            bail!("fixed IP {fixed} already has floating IP {}", h.address);
                        }
                        tx.ip_set_association(floating, Some(fixed), None)?;
                        Ok(floating)
                    })
                })
            })
            .collect();
        let results: Vec<Result<Ipv4Addr>> =
            handles.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<Ipv4Addr> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(winners.len(), 1, "checked {checked}: {results:?}");
        let expected = if checked {
            format!("fixed IP {fixed} already has floating IP {}", winners[0])
        } else {
            "UNIQUE constraint failed: floating_ips.fixed_ip".to_owned()
        };
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(e.to_string(), expected);
        }
        let mut store = env.open();
        assert_eq!(
            store.read(|tx| tx.associations()).unwrap(),
            [(winners[0], fixed)]
        );
        store
            .write(|tx| tx.ip_set_association(winners[0], None, None))
            .unwrap();
    }
}

fn ids_ports_users_and_tags(b: Backend) {
    let env = Env::new(b, "rows");
    let mut store = env.open();
    add_pool(&mut store, "public", "203.0.113.0/24");
    let ids: Vec<i64> = (1..=3)
        .map(|i| {
            store
                .write(|tx| {
                    tx.ip_insert(
                        Ipv4Addr::new(203, 0, 113, i),
                        "public",
                        Some("p"),
                        Some("d"),
                    )
                })
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    // Ids are never reused.
    store.write(|tx| tx.ip_delete(ip("203.0.113.3"))).unwrap();
    let row = store
        .write(|tx| tx.ip_insert(ip("203.0.113.9"), "public", None, None))
        .unwrap();
    assert_eq!(row.id, 4);
    assert_eq!(store.read(|tx| tx.ip_get_by_id(3)).unwrap(), None);
    assert_eq!(
        store
            .read(|tx| tx.ip_get_by_id(1))
            .unwrap()
            .unwrap()
            .address,
        ip("203.0.113.1")
    );
    store
        .write(|tx| tx.ip_set_description(1, Some("web")))
        .unwrap();
    store.write(|tx| tx.ip_set_description(99, None)).unwrap();
    // Tags: sorted, once each, removed with their address.
    let tags = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    store
        .write(|tx| tx.ip_tags_add(1, &tags(&["web", "blue", "web"])))
        .unwrap();
    store
        .write(|tx| tx.ip_tags_add(1, &tags(&["red"])))
        .unwrap();
    assert_eq!(
        err(store.write(|tx| tx.ip_tags_add(99, &tags(&["x"])))),
        "FOREIGN KEY constraint failed"
    );
    let one = store
        .read(|tx| tx.ip_get(ip("203.0.113.1")))
        .unwrap()
        .unwrap();
    assert_eq!(one.tags, ["blue", "red", "web"]);
    assert_eq!(one.description.as_deref(), Some("web"));
    store
        .write(|tx| tx.ip_tags_remove(1, Some(&tags(&["blue", "absent"]))))
        .unwrap();
    assert_eq!(
        store.read(|tx| tx.ip_get_by_id(1)).unwrap().unwrap().tags,
        ["red", "web"]
    );
    store.write(|tx| tx.ip_tags_remove(1, None)).unwrap();
    assert!(
        store
            .read(|tx| tx.ip_get_by_id(1))
            .unwrap()
            .unwrap()
            .tags
            .is_empty()
    );

    // Ports.
    let port = |id: &str, fixed: &str, project: &str| PortRow {
        id: id.into(),
        network: "gw-int".into(),
        fixed_ip: ip(fixed),
        name: format!("n-{id}"),
        device_id: String::new(),
        device_owner: String::new(),
        project: project.into(),
        description: String::new(),
        created_at: String::new(),
    };
    let p1 = store
        .write(|tx| tx.port_insert(&port("zz", "10.0.0.11", "p")))
        .unwrap();
    assert!(p1.created_at.ends_with('Z'));
    store
        .write(|tx| tx.port_insert(&port("aa", "10.0.0.12", "q")))
        .unwrap();
    assert_eq!(
        err(store.write(|tx| tx.port_insert(&port("zz", "10.0.0.13", "p")))),
        "UNIQUE constraint failed: ports.id"
    );
    assert_eq!(
        err(store.write(|tx| tx.port_insert(&port("bb", "10.0.0.11", "p")))),
        "UNIQUE constraint failed: ports.fixed_ip"
    );
    let listed: Vec<String> = store
        .read(|tx| tx.port_list(None))
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(listed, ["zz", "aa"], "creation order");
    assert_eq!(store.read(|tx| tx.port_list(Some("q"))).unwrap().len(), 1);
    let mut changed = p1.clone();
    changed.name = "renamed".into();
    changed.project = "ignored".into();
    store.write(|tx| tx.port_update(&changed)).unwrap();
    let got = store.read(|tx| tx.port_get("zz")).unwrap().unwrap();
    assert_eq!((got.name.as_str(), got.project.as_str()), ("renamed", "p"));
    assert_eq!(
        store
            .read(|tx| tx.port_by_fixed(ip("10.0.0.12")))
            .unwrap()
            .unwrap()
            .id,
        "aa"
    );
    assert!(store.write(|tx| tx.port_delete("aa")).unwrap());
    assert!(!store.write(|tx| tx.port_delete("aa")).unwrap());

    // Users.
    store
        .write(|tx| tx.user_insert("bob", "p", "member", "$h1"))
        .unwrap();
    store
        .write(|tx| tx.user_insert("alice", "admin", "admin", "$h2"))
        .unwrap();
    assert_eq!(
        err(store.write(|tx| tx.user_insert("bob", "p", "member", "$h"))),
        "UNIQUE constraint failed: users.name"
    );
    assert!(
        err(store.write(|tx| tx.user_insert("eve", "p", "root", "$h")))
            .starts_with("CHECK constraint failed")
    );
    let users: Vec<String> = store
        .read(|tx| tx.user_list())
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(users, ["alice", "bob"]);
    assert_eq!(
        store
            .read(|tx| tx.user_get("bob"))
            .unwrap()
            .unwrap()
            .password_hash,
        "$h1"
    );
    assert_eq!(store.read(|tx| tx.project_names()).unwrap(), ["admin", "p"]);
    assert!(store.write(|tx| tx.user_delete("bob")).unwrap());
    assert!(!store.write(|tx| tx.user_delete("bob")).unwrap());
    assert_eq!(store.read(|tx| tx.user_get("bob")).unwrap(), None);
}

/// etcd only: writers keep allocating while the leader is killed, five times. Every allocation
/// answered Ok is stored, once; one answered with an error is not, unless the error said the
/// outcome was unknown (see the etcd store: a `Txn` without an answer is looked up, not
/// simply sent again).
#[test]
fn etcd_writes_through_leader_loss_apply_exactly_once() {
    let mut cluster = Cluster::three().unwrap_or_else(|e| panic!("{e:#}"));
    let spec = StoreSpec::parse(&cluster.url()).unwrap();
    let mut store = Store::open_spec(&spec, true).unwrap();
    let ranges = Arc::new(add_pool(&mut store, "public", "198.18.0.0/16"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..6)
        .map(|_| {
            let (spec, ranges, stop) = (spec.clone(), ranges.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut store = Store::open_spec(&spec, true).unwrap();
                let mut results = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && results.len() < 5000 {
                    results.push(allocate(&mut store, "public", &ranges, None));
                }
                results
            })
        })
        .collect();
    let mut killed = 0;
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let leader = cluster.leader().expect("a leader");
        cluster.kill(leader);
        killed += 1;
        std::thread::sleep(std::time::Duration::from_millis(700));
        cluster.restart(leader).unwrap_or_else(|e| panic!("{e:#}"));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results: Vec<Result<Ipv4Addr>> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let ok: Vec<Ipv4Addr> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let ok_set: BTreeSet<Ipv4Addr> = ok.iter().copied().collect();
    assert_eq!(
        ok.len(),
        ok_set.len(),
        "an address handed out twice: {results:?}"
    );
    let unknown = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_err_and(|e| format!("{e:#}").contains("may still be applied"))
        })
        .count();
    let stored: BTreeSet<Ipv4Addr> = store
        .read(|tx| tx.ip_addresses_in_pool("public"))
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        stored.is_superset(&ok_set),
        "an answered allocation is missing"
    );
    let extra = stored.difference(&ok_set).count();
    assert!(
        extra <= unknown,
        "{extra} allocations stored that no Ok answered ({unknown} answers said unknown): {results:?}"
    );
    assert!(
        ok.len() > 20,
        "writes stalled: {} ok after {killed} leader kills",
        ok.len()
    );
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    eprintln!("{} ok, {} errors: {errors:?}", ok.len(), errors.len());
}

fn identity_is_fixed(b: Backend) {
    let env = Env::new(b, "identity");
    let first = env.open().identity().unwrap();
    assert_ne!(first, 0);
    assert!(first <= i64::MAX as u64);
    assert_eq!(
        env.open().identity().unwrap(),
        first,
        "kept across connections"
    );
}
