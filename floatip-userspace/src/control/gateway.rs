//! The data plane's life cycle as the control layer drives it: attach (then restore every pool
//! and association from the database), detach, status, gratuitous ARP, and the `nat` plumbing
//! that writes pairs into the maps without the database.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Result;

use super::{
    Control, GENERATION_DIRTY, SyncReport, check_belongs, validate::check_not_gateway_addr,
};
use crate::{
    dataplane::{AttachOptions, Dataplane, DataplaneStatus, Mode, Pair, PairStats, Role, log},
    error::fail,
    garp::{self, Announcer},
    iface,
    store::{GatewayInfo, Store, StoreSpec},
};

/// `floatip status`: the data plane, and how it compares with the database.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GatewayStatus {
    #[serde(flatten)]
    pub dataplane: DataplaneStatus,
    pub state_database: PathBuf,
    /// `None` when the database cannot be compared: `sync_error` says why.
    pub sync: Option<SyncReport>,
    pub sync_error: Option<String>,
    /// With the state in etcd: the gateway group, each gateway's applied revision and the
    /// pools it answers for, and the store's revision to compare with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateways: Option<Vec<GatewayInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_revision: Option<i64>,
}

/// What `attach` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttachReport {
    /// Associations the maps had to be given (all of them after a reboot).
    pub restored: usize,
    /// Things that work but may not do what the operator expects.
    pub warnings: Vec<String>,
    /// etcd: the revision of the state the maps were brought to (a gateway group's agent
    /// watches from the next one instead of reading everything again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_revision: Option<i64>,
    /// The pools as that revision has them.
    #[serde(skip)]
    pub pools: Vec<crate::store::PoolRow>,
}

/// The data plane of one gateway, for the commands that need only its pins and maps (never
/// the database, so that they create none).
pub struct Gateway {
    bpffs: PathBuf,
}

impl Gateway {
    pub fn new(bpffs: &Path) -> Self {
        Self {
            bpffs: bpffs.to_owned(),
        }
    }

    /// Loads and attaches the programs (atomically replacing ones already attached), then
    /// brings the maps in line with the database at `state`: fresh maps (after a reboot) get
    /// every pool and association back. Maps already pinned must belong to that database,
    /// unless `adopt` says to reload them from it.
    pub fn attach(
        &self,
        state: &StoreSpec,
        opts: &AttachOptions,
        adopt: bool,
    ) -> Result<AttachReport> {
        Dataplane::check_nics_free(&self.bpffs, opts)?;
        if !Dataplane::is_attached(&self.bpffs) {
            // Fresh maps: the database may be created, before anything is pinned.
            Store::open_spec(state, true)?.check_integrity()?;
        } else {
            // Checked before anything changes: a wrong --state must not touch the data plane.
            let mut pinned = Control::open_adopting(state, &self.bpffs)?;
            pinned.store.check_integrity()?;
            if !adopt && let Some(maps) = pinned.maps.as_ref().and_then(Option::as_ref) {
                check_belongs(&mut pinned.store, maps, &self.bpffs)?;
            }
            let size = pinned
                .maps_ref()
                .map(|m| m.max_associations())
                .transpose()?;
            if let (Some(want), Some(have)) = (opts.max_associations, size)
                && want != have
            {
                fail!(
                    Conflict,
                    "the pinned maps hold {have} associations, not {want}; run `floatip detach` \
                     first, then attach with --max-associations {want} (associations are restored \
                     from the database)"
                );
            }
            let counters = pinned.maps_ref().map(|m| m.counters());
            if let (Some(want), Some(have)) = (opts.counters, counters)
                && want != have
            {
                fail!(
                    Conflict,
                    "the pinned maps keep {} counters, not {}; run `floatip detach` first, then \
                     attach with --counters {} (associations are restored from the database)",
                    have.as_str(),
                    want.as_str(),
                    want.as_str()
                );
            }
        }
        let attach_warnings = Dataplane::attach(&self.bpffs, opts)?;
        let mut control = Control::open_adopting(state, &self.bpffs)?;
        let (restored, pools) = control.resync_pools()?;
        let store_revision = control.store.last_revision();
        let mut warnings = unanswered_pools(&mut control)?;
        warnings.extend(attach_warnings);
        if opts.mode == Mode::Xdp {
            for nic in opts.external.iter().chain(&opts.internal) {
                if iface::driver(nic).is_ok_and(|d| d == "veth") {
                    warnings.push(format!(
                        "{nic} is a veth: the kernel drops every frame XDP sends into it (ARP \
                         replies included) unless its peer runs an XDP program or has GRO on \
                         (ethtool -K PEER gro on)"
                    ));
                }
            }
        }
        Ok(AttachReport {
            restored,
            warnings,
            store_revision,
            pools,
        })
    }

    /// Removes the programs of `interfaces` (every one when empty, with every pin).
    pub fn detach(&self, interfaces: &[String]) -> Result<()> {
        Dataplane::detach(&self.bpffs, interfaces)
    }

    /// Interfaces, sizes, generation and per-outcome counters of the attached data plane, and
    /// whether its maps are in step with the database at `state` (never created here).
    pub fn status(&self, state: &StoreSpec) -> Result<GatewayStatus> {
        let dataplane = Dataplane::open(&self.bpffs)?.status()?;
        let (mut sync, mut sync_error, mut group) = (None, None, None);
        if !state.exists() {
            sync_error = Some(format!("there is no state database at {state}"));
        } else {
            match Control::open(state, &self.bpffs) {
                Ok(mut c) => {
                    match c.check() {
                        Ok(report) => sync = Some(report),
                        Err(e) => sync_error = Some(format!("{e:#}")),
                    }
                    group = c.store.group_view().ok().flatten();
                }
                Err(e) => sync_error = Some(format!("{e:#}")),
            }
        }
        Ok(GatewayStatus {
            dataplane,
            state_database: state.display_path(),
            sync,
            sync_error,
            store_revision: group.as_ref().map(|g| g.revision),
            gateways: group.map(|g| g.gateways()),
        })
    }

    /// Plumbing: maps `floating` to `fixed` in the maps only. The maps are marked dirty so
    /// the next association command compares them with the database and repairs them.
    pub fn nat_add(&self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
        let mut maps = Dataplane::open(&self.bpffs)?;
        let local = iface::addresses()?;
        check_not_gateway_addr(floating, &local)?;
        check_not_gateway_addr(fixed, &local)?;
        maps.set_generation(GENERATION_DIRTY)?;
        maps.nat_add(floating, fixed)?;
        announce(&maps, None, floating, None);
        Ok(())
    }

    /// Plumbing: removes the pair of `floating` from the maps only; returns its fixed IP.
    pub fn nat_del(&self, floating: Ipv4Addr) -> Result<Ipv4Addr> {
        let mut maps = Dataplane::open(&self.bpffs)?;
        maps.set_generation(GENERATION_DIRTY)?;
        maps.nat_del(floating)
    }

    /// The pairs the maps hold.
    pub fn nat_list(&self) -> Result<Vec<Pair>> {
        Dataplane::open(&self.bpffs)?.nat_list()
    }

    /// Per-association counters, of one pair or of all.
    pub fn nat_stats(&self, floating: Option<Ipv4Addr>) -> Result<Vec<PairStats>> {
        Dataplane::open(&self.bpffs)?.pair_stats(floating)
    }

    /// Keeps the next-hop cache in step with the kernel until `stop` says
    /// so (see [`crate::follower`]); withdraws the cache when it stops.
    pub fn follow(&self, verbose: bool, stop: &dyn Fn() -> bool) -> Result<()> {
        crate::follower::Follower::new(&self.bpffs, verbose)?.run(stop)
    }

    /// Follows the programs' event log (see [`crate::dataplane::log`]) until `stop` says so or
    /// `limit` passes, printing each record with `print`.
    pub fn follow_log(
        &self,
        limit: Option<Duration>,
        stop: &dyn Fn() -> bool,
        started: &dyn Fn(usize),
        print: &mut (dyn FnMut(String) + Send),
    ) -> Result<()> {
        log::follow(&self.bpffs, limit, stop, started, print)
    }
}

/// Pools bound to an external NIC that is not attached as one: no NIC answers ARP for their
/// addresses until it is.
fn unanswered_pools(control: &mut Control) -> Result<Vec<String>> {
    let attached: Vec<String> = match control.maps_ref() {
        Some(m) => m
            .nics(Role::External)?
            .into_iter()
            .filter_map(|(idx, _)| iface::name(idx))
            .collect(),
        None => Vec::new(),
    };
    Ok(control
        .pool_list()?
        .into_iter()
        .filter_map(|p| {
            let nic = p.external_interface?;
            (!attached.contains(&nic)).then(|| {
                format!(
                    "pool {} answers only on {nic}, which is not an attached external \
                     interface: its floating IPs get no ARP replies until it is",
                    p.name
                )
            })
        })
        .collect())
}

/// Sends gratuitous ARP for `floating` so that neighbours drop stale entries: out of its
/// pool's external NIC (`nic`), or of every external NIC when the pool names none; now, or
/// queued to `announcer`. A failure is reported, not fatal (the mapping already works,
/// neighbours just learn it later).
pub(super) fn announce(
    dp: &Dataplane,
    announcer: Option<&Announcer>,
    floating: Ipv4Addr,
    nic: Option<&str>,
) {
    // In a group, only the pool's owner moves the neighbours' caches (a CLI run on another
    // gateway included): the others must not draw its traffic.
    if dp.answered_elsewhere(floating).unwrap_or(false) {
        return;
    }
    let only = nic.and_then(|n| iface::index(n).ok());
    match dp.nics(Role::External) {
        Ok(nics) => {
            for (idx, mac) in nics
                .into_iter()
                .filter(|(i, _)| only.is_none_or(|o| o == *i))
            {
                if let Some(a) = announcer {
                    a.announce(garp::Target {
                        ifindex: idx,
                        mac,
                        ip: floating,
                    });
                } else if let Err(e) = garp::announce(idx, &mac, floating) {
                    eprintln!("floatip: warning: gratuitous ARP for {floating} failed: {e:#}");
                }
            }
        }
        Err(e) => eprintln!("floatip: warning: cannot list external NICs: {e:#}"),
    }
}

/// Runs the next-hop follower on a thread of its own until the returned flag is set; while
/// the data plane is not attached (or was detached), it retries every second. What fails
/// otherwise is reported once per distinct error, prefixed with `who`.
pub fn follow_in_background(
    bpffs: PathBuf,
    who: &'static str,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let stopped = || flag.load(Ordering::SeqCst);
        let mut last_error = String::new();
        while !stopped() {
            if let Err(e) = Gateway::new(&bpffs).follow(false, &stopped) {
                // Not attached (yet, or any more) is a state the API reports (503), not news.
                let quiet = crate::error::kind_of(&e) == crate::error::ErrorKind::Unavailable;
                let e = format!("{e:#}");
                if !quiet && e != last_error {
                    eprintln!("{who}: next-hop follower: {e}; retrying");
                    last_error = e;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    });
    (stop, thread)
}
