//! The control-plane operations: pools, floating IP allocation, association and quotas. The
//! only module that combines the store and the data plane.
//!
//! Every mutation follows the same shape: validate inside a `BEGIN IMMEDIATE` transaction,
//! change the rows, update the maps, and commit only if the maps took the change. Any error
//! leaves both the database and the maps as they were, and is one line naming what is wrong.
//!
//! Keeping the maps in step with the database relies on the association generation: the store
//! bumps it in every transaction that changes associations, and the maps record the generation
//! they reflect. Before touching the maps a transaction marks them [`GENERATION_DIRTY`] (a value
//! the database never reaches) and records the new generation only after the commit, so a crash
//! at any point leaves a mismatch that the next command notices and repairs. In normal operation
//! the check is one comparison, so the cost of an association does not grow with their number.

use std::{
    collections::{HashMap, HashSet},
    ffi::CStr,
    net::Ipv4Addr,
    path::Path,
};

use anyhow::{Context, Result, anyhow, bail};
use floatip_common::MAX_POOL_PREFIXES;
use serde::Serialize;

pub mod failure;
pub mod ports;
pub mod stats;
pub mod users;

use crate::{
    addr::{BulkEntry, PoolRanges, TrieEntry},
    dataplane::{Dataplane, Pair},
    store::{FloatingIpRow, IpFilter, PoolRow, QuotaRow, Store, Tx},
};

/// Map generation meaning "being changed, or changed without the control plane": never equal
/// to a database generation, so it always triggers a comparison.
pub const GENERATION_DIRTY: u64 = u64::MAX;

const NOT_ATTACHED: &str =
    "the data plane is not attached; run `floatip attach --external IFACE --internal IFACE` first";

/// What the control plane needs from the data plane. [`Dataplane`] implements it; the tests
/// use an in-memory fake.
pub trait Maps {
    fn nat_add(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()>;
    fn nat_move(&mut self, floating: Ipv4Addr, new_fixed: Ipv4Addr) -> Result<()>;
    fn nat_del(&mut self, floating: Ipv4Addr) -> Result<Ipv4Addr>;
    fn nat_purge(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()>;
    fn nat_list(&self) -> Result<Vec<Pair>>;
    fn nat_list_reverse(&self) -> Result<Vec<Pair>>;
    fn internal_route(&self, fixed: Ipv4Addr) -> Result<Option<String>>;
    /// Tells the external network that `floating` now lives here (gratuitous ARP).
    fn announce(&self, _floating: Ipv4Addr) {}
    fn nat_add_bulk(&mut self, pairs: &[Pair]) -> Result<()>;
    fn pool_prefix_add(&mut self, addr: Ipv4Addr, len: u8, excluded: bool) -> Result<()>;
    fn pool_prefix_del(&mut self, addr: Ipv4Addr, len: u8) -> Result<()>;
    fn generation(&self) -> Result<u64>;
    fn set_generation(&mut self, generation: u64) -> Result<()>;
    /// Recounts derived state (the anti-spoofing filter) from the association maps. Only
    /// after drift: a crash can leave the filter counting a fixed IP that left the maps (too
    /// high, never too low), which the map operations themselves keep exact otherwise.
    fn rebuild_derived(&mut self) -> Result<()> {
        Ok(())
    }
}

impl Maps for Dataplane {
    fn nat_add(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
        Dataplane::nat_add(self, floating, fixed)
    }
    fn nat_move(&mut self, floating: Ipv4Addr, new_fixed: Ipv4Addr) -> Result<()> {
        Dataplane::nat_move(self, floating, new_fixed)
    }
    fn nat_del(&mut self, floating: Ipv4Addr) -> Result<Ipv4Addr> {
        Dataplane::nat_del(self, floating)
    }
    fn nat_purge(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
        Dataplane::nat_purge(self, floating, fixed)
    }
    fn nat_list(&self) -> Result<Vec<Pair>> {
        Dataplane::nat_list(self)
    }
    fn nat_list_reverse(&self) -> Result<Vec<Pair>> {
        Dataplane::nat_list_reverse(self)
    }
    fn rebuild_derived(&mut self) -> Result<()> {
        Dataplane::rebuild_spoof_filter(self)
    }
    fn internal_route(&self, fixed: Ipv4Addr) -> Result<Option<String>> {
        Dataplane::internal_route(self, fixed)
    }
    fn announce(&self, floating: Ipv4Addr) {
        announce(self, floating)
    }
    fn nat_add_bulk(&mut self, pairs: &[Pair]) -> Result<()> {
        Dataplane::nat_add_bulk(self, pairs)
    }
    fn pool_prefix_add(&mut self, addr: Ipv4Addr, len: u8, excluded: bool) -> Result<()> {
        Dataplane::pool_prefix_add(self, addr, len, excluded)
    }
    fn pool_prefix_del(&mut self, addr: Ipv4Addr, len: u8) -> Result<()> {
        Dataplane::pool_prefix_del(self, addr, len)
    }
    fn generation(&self) -> Result<u64> {
        Dataplane::generation(self)
    }
    fn set_generation(&mut self, generation: u64) -> Result<()> {
        Dataplane::set_generation(self, generation)
    }
}

/// ACTIVE when associated, DOWN when not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Active,
    Down,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Down => "DOWN",
        }
    }
}

/// A floating IP as commands print it; the field names are the stable JSON keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FloatingIp {
    pub id: i64,
    pub floating_ip_address: Ipv4Addr,
    pub fixed_ip_address: Option<Ipv4Addr>,
    pub pool: String,
    pub project: Option<String>,
    pub instance: Option<String>,
    pub status: Status,
    pub description: Option<String>,
    pub created_at: String,
}

impl From<FloatingIpRow> for FloatingIp {
    fn from(r: FloatingIpRow) -> Self {
        Self {
            id: r.id,
            floating_ip_address: r.address,
            fixed_ip_address: r.fixed_ip,
            status: if r.fixed_ip.is_some() {
                Status::Active
            } else {
                Status::Down
            },
            pool: r.pool,
            project: r.project,
            instance: r.instance,
            description: r.description,
            created_at: r.created_at,
        }
    }
}

/// A pool with its address counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pool {
    pub name: String,
    pub ranges: Vec<String>,
    pub excludes: Vec<String>,
    pub external_interface: Option<String>,
    pub total: u64,
    pub allocated: u64,
    pub free: u64,
    pub created_at: String,
}

/// A project's floating IP usage; `limit` is `None` when unlimited.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quota {
    pub project: String,
    pub used: u64,
    pub limit: Option<u32>,
}

impl From<QuotaRow> for Quota {
    fn from(r: QuotaRow) -> Self {
        Self {
            project: r.project,
            used: r.used,
            limit: r.limit,
        }
    }
}

/// Filter of [`Control::ip_list`]; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct IpQuery<'a> {
    pub pool: Option<&'a str>,
    pub project: Option<&'a str>,
    pub status: Option<Status>,
}

/// One `ip associate`.
#[derive(Clone, Debug)]
pub struct Associate<'a> {
    pub floating: Ipv4Addr,
    pub fixed: Ipv4Addr,
    pub instance: Option<&'a str>,
    /// Acting for this project: other projects' addresses are invisible.
    pub project: Option<&'a str>,
    /// Move the floating IP if it is already associated.
    pub force: bool,
}

enum MapsSlot<M> {
    /// Opened on first use: most commands never need the maps.
    Pending(Box<dyn FnOnce() -> Result<Option<M>>>),
    /// `None`: the data plane is not attached.
    Ready(Option<M>),
}

/// IPv4 addresses configured on the gateway, with their interface names.
pub type LocalAddrs = fn() -> Result<Vec<(String, Ipv4Addr)>>;

/// The state database plus, when attached, the data plane's maps.
pub struct Control<M: Maps = Dataplane> {
    store: Store,
    maps: MapsSlot<M>,
    local_addrs: LocalAddrs,
}

impl Control<Dataplane> {
    /// Opens the state at `state`; the data plane pinned under `bpffs` is opened when a
    /// command needs it.
    pub fn open(state: &Path, bpffs: &Path) -> Result<Self> {
        let bpffs = bpffs.to_owned();
        Ok(Self {
            store: Store::open(state)?,
            maps: MapsSlot::Pending(Box::new(move || open_dataplane(&bpffs))),
            local_addrs: gateway_ipv4_addrs,
        })
    }
}

/// The data plane if it is attached.
fn open_dataplane(bpffs: &Path) -> Result<Option<Dataplane>> {
    if !Dataplane::is_attached(bpffs) {
        return Ok(None);
    }
    Dataplane::open(bpffs).map(Some)
}

impl<M: Maps> Control<M> {
    /// A control plane over `store`, with `maps` standing for the data plane (`None`: not
    /// attached).
    pub fn new(store: Store, maps: Option<M>) -> Self {
        Self {
            store,
            maps: MapsSlot::Ready(maps),
            local_addrs: gateway_ipv4_addrs,
        }
    }

    /// The store and, if attached, the maps, borrowed separately so that a transaction can
    /// update the maps.
    fn parts(&mut self) -> Result<(&mut Store, Option<&mut M>)> {
        if let MapsSlot::Pending(_) = self.maps {
            let MapsSlot::Pending(open) = std::mem::replace(&mut self.maps, MapsSlot::Ready(None))
            else {
                unreachable!()
            };
            self.maps = MapsSlot::Ready(open()?);
        }
        let MapsSlot::Ready(maps) = &mut self.maps else {
            unreachable!()
        };
        Ok((&mut self.store, maps.as_mut()))
    }

    /// Like [`Self::parts`], failing first thing when the data plane is not attached.
    fn parts_attached(&mut self) -> Result<(&mut Store, &mut M)> {
        let (store, maps) = self.parts()?;
        Ok((store, maps.ok_or_else(|| anyhow!(NOT_ATTACHED))?))
    }

    // --- pools ---

    /// `pool create`. Adds the pool's trie entries when the data plane is attached (otherwise
    /// `attach` adds them).
    pub fn pool_create(
        &mut self,
        name: &str,
        ranges: &PoolRanges,
        external: Option<&str>,
    ) -> Result<Pool> {
        validate_name("pool name", name, 64)?;
        if let Some(iface) = external {
            validate_iface(iface)?;
        }
        check_no_gateway_addr(name, ranges, &(self.local_addrs)()?)?;
        let entries = ranges.trie_entries();
        let (store, mut maps) = self.parts()?;
        let mut added = false;
        let result = store.write(|tx| {
            if tx.pool_get(name)?.is_some() {
                bail!("pool {name} already exists");
            }
            let mut trie_size = entries.len();
            for other in tx.pool_list()? {
                let other_ranges = stored_ranges(&other)?;
                if other_ranges.overlaps(ranges) {
                    bail!("pool {name} ({ranges}) overlaps pool {} ({other_ranges})", other.name);
                }
                trie_size += other_ranges.trie_entries().len();
            }
            if trie_size > MAX_POOL_PREFIXES as usize {
                bail!(
                    "pool {name} needs {} prefixes; with the existing pools that is {trie_size}, above the \
                     data plane's limit of {MAX_POOL_PREFIXES}",
                    entries.len()
                );
            }
            let row = tx.pool_insert(name, &ranges.ranges_text(), &ranges.excludes_text(), external)?;
            if let Some(m) = maps.as_deref_mut() {
                trie_add(m, &entries)?;
                added = true;
            }
            pool_info(tx, row)
        });
        if result.is_err() && added {
            // The commit failed after the maps took the entries: take them back out.
            if let Some(m) = maps {
                let _ = trie_del(m, &entries);
            }
        }
        result
    }

    pub fn pool_list(&mut self) -> Result<Vec<Pool>> {
        self.store.read(|tx| {
            tx.pool_list()?
                .into_iter()
                .map(|p| pool_info(tx, p))
                .collect()
        })
    }

    pub fn pool_show(&mut self, name: &str) -> Result<Pool> {
        self.store.read(|tx| pool_info(tx, get_pool(tx, name)?))
    }

    /// `pool delete`: only once no address is allocated from it.
    pub fn pool_delete(&mut self, name: &str) -> Result<()> {
        let (store, maps) = self.parts()?;
        store.write(|tx| {
            let pool = get_pool(tx, name)?;
            let allocated = tx.ip_count_in_pool(name)?;
            if allocated > 0 {
                let s = if allocated == 1 { "" } else { "s" };
                bail!("pool {name} has {allocated} allocated floating IP{s}; delete them first");
            }
            tx.pool_delete(name)?;
            if let Some(m) = maps {
                trie_del(m, &stored_ranges(&pool)?.trie_entries())?;
            }
            Ok(())
        })
    }

    // --- floating IPs ---

    /// `ip create`: the lowest free address of `pool`, or `address`.
    pub fn ip_create(
        &mut self,
        pool: &str,
        address: Option<Ipv4Addr>,
        project: Option<&str>,
        description: Option<&str>,
    ) -> Result<FloatingIp> {
        if let Some(p) = project {
            validate_name("project", p, 255)?;
        }
        if let Some(d) = description {
            validate_text("description", d, 255)?;
        }
        self.store.write(|tx| {
            let ranges = stored_ranges(&get_pool(tx, pool)?)?;
            if let Some(project) = project
                && let Some(limit) = tx.quota_get(project)?
            {
                let used = tx.ip_count_for_project(project)?;
                if used >= u64::from(limit) {
                    bail!(
                        "project {project} is at its quota: {used} of {limit} floating IPs in use"
                    );
                }
            }
            let address = match address {
                Some(a) => {
                    if !ranges.contains(a) {
                        bail!("{a} is not an address of pool {pool} ({ranges})");
                    }
                    if tx.ip_get(a)?.is_some() {
                        bail!("floating IP {a} is already allocated");
                    }
                    a
                }
                None => ranges
                    .lowest_free(&tx.ip_addresses_in_pool(pool)?)
                    .ok_or_else(|| anyhow!("no more floating IPs in pool {pool}"))?,
            };
            Ok(tx.ip_insert(address, pool, project, description)?.into())
        })
    }

    pub fn ip_list(&mut self, query: &IpQuery<'_>) -> Result<Vec<FloatingIp>> {
        self.store.read(|tx| {
            if let Some(pool) = query.pool {
                get_pool(tx, pool)?;
            }
            let filter = IpFilter {
                pool: query.pool,
                project: query.project,
                associated: query.status.map(|s| s == Status::Active),
            };
            Ok(tx
                .ip_list(&filter)?
                .into_iter()
                .map(FloatingIp::from)
                .collect())
        })
    }

    pub fn ip_show(&mut self, floating: Ipv4Addr, project: Option<&str>) -> Result<FloatingIp> {
        self.store
            .read(|tx| Ok(owned_ip(tx, floating, project)?.into()))
    }

    /// `ip associate`. Associating a pair that already exists changes nothing.
    pub fn ip_associate(&mut self, req: &Associate<'_>) -> Result<FloatingIp> {
        let Associate {
            floating,
            fixed,
            instance,
            project,
            force,
        } = *req;
        if let Some(i) = instance {
            validate_name("instance", i, 255)?;
        }
        let (store, maps) = self.parts_attached()?;
        validate_fixed(fixed)?;
        let (record, generation) = store.write(|tx| {
            sync_maps(tx, maps)?;
            let row = owned_ip(tx, floating, project)?;
            check_fixed_outside_pools(&load_pools(tx)?, fixed)?;
            if let Some(holder) = tx.ip_by_fixed(fixed)? {
                if holder.address == floating {
                    return Ok((row.into(), None));
                }
                bail!("fixed IP {fixed} already has floating IP {}", holder.address);
            }
            if let Some(current) = row.fixed_ip
                && !force
            {
                bail!("floating IP {floating} is already associated with {current}; use --force to move it");
            }
            check_reachable(maps, fixed)?;
            tx.ip_set_association(floating, Some(fixed), instance)?;
            let moving = row.fixed_ip.is_some();
            let generation = update_maps(tx, maps, |m| {
                if moving { m.nat_move(floating, fixed) } else { m.nat_add(floating, fixed) }
            })?;
            Ok((get_ip(tx, floating)?, Some(generation)))
        })?;
        finish(maps, generation);
        if generation.is_some() {
            maps.announce(floating);
        }
        Ok(record)
    }

    /// `ip associate --from-file`: every line in one transaction and one batched map update;
    /// one bad line fails the whole file. Lines that are already in place change nothing.
    pub fn ip_associate_bulk(
        &mut self,
        entries: &[BulkEntry],
        project: Option<&str>,
    ) -> Result<Vec<FloatingIp>> {
        let (store, maps) = self.parts_attached()?;
        for e in entries {
            validate_fixed(e.fixed).with_context(|| format!("line {}", e.line))?;
            if let Some(i) = &e.instance {
                validate_name("instance", i, 255).with_context(|| format!("line {}", e.line))?;
            }
        }
        let (records, generation) = store.write(|tx| {
            sync_maps(tx, maps)?;
            let pools = load_pools(tx)?;
            let mut pairs = Vec::with_capacity(entries.len());
            for e in entries {
                let line = || format!("line {}", e.line);
                let row = owned_ip(tx, e.floating, project).with_context(line)?;
                check_fixed_outside_pools(&pools, e.fixed).with_context(line)?;
                if let Some(holder) = tx.ip_by_fixed(e.fixed)? {
                    if holder.address == e.floating {
                        continue;
                    }
                    return Err(anyhow!(
                        "fixed IP {} already has floating IP {}",
                        e.fixed,
                        holder.address
                    ))
                    .with_context(line);
                }
                if let Some(current) = row.fixed_ip {
                    return Err(anyhow!(
                        "floating IP {} is already associated with {current}",
                        e.floating
                    ))
                    .with_context(line);
                }
                check_reachable(maps, e.fixed).with_context(line)?;
                tx.ip_set_association(e.floating, Some(e.fixed), e.instance.as_deref())?;
                pairs.push(Pair {
                    floating: e.floating,
                    fixed: e.fixed,
                });
            }
            let generation = if pairs.is_empty() {
                None
            } else {
                Some(update_maps(tx, maps, |m| {
                    m.nat_add_bulk(&pairs).inspect_err(|_| {
                        // A batch may stop half way: take out whatever of it went in.
                        for p in &pairs {
                            let _ = m.nat_purge(p.floating, p.fixed);
                        }
                    })
                })?)
            };
            let records = entries
                .iter()
                .map(|e| get_ip(tx, e.floating))
                .collect::<Result<Vec<_>>>()?;
            Ok((records, generation))
        })?;
        finish(maps, generation);
        Ok(records)
    }

    /// `ip disassociate`. An address that is not associated is left as it is.
    pub fn ip_disassociate(
        &mut self,
        floating: Ipv4Addr,
        project: Option<&str>,
    ) -> Result<FloatingIp> {
        let (store, maps) = self.parts_attached()?;
        let (record, generation) = store.write(|tx| {
            sync_maps(tx, maps)?;
            let row = owned_ip(tx, floating, project)?;
            if row.fixed_ip.is_none() {
                return Ok((row.into(), None));
            }
            tx.ip_set_association(floating, None, None)?;
            let generation = update_maps(tx, maps, |m| m.nat_del(floating).map(drop))?;
            Ok((get_ip(tx, floating)?, Some(generation)))
        })?;
        finish(maps, generation);
        Ok(record)
    }

    /// `ip delete`: releases the address, disassociating it first. Needs the data plane only
    /// when the address is associated.
    pub fn ip_delete(&mut self, floating: Ipv4Addr, project: Option<&str>) -> Result<FloatingIp> {
        let (store, mut maps) = self.parts()?;
        let (record, generation) = store.write(|tx| {
            let row = owned_ip(tx, floating, project)?;
            let mut generation = None;
            if row.fixed_ip.is_some() {
                let m = maps.as_deref_mut().ok_or_else(|| anyhow!(NOT_ATTACHED))?;
                sync_maps(tx, m)?;
                tx.ip_delete(floating)?;
                generation = Some(update_maps(tx, m, |m| m.nat_del(floating).map(drop))?);
            } else {
                tx.ip_delete(floating)?;
            }
            Ok((FloatingIp::from(row), generation))
        })?;
        if let Some(m) = maps {
            finish(m, generation);
        }
        Ok(record)
    }

    // --- quotas ---

    pub fn quota_set(&mut self, project: &str, floating_ips: u32) -> Result<Quota> {
        validate_name("project", project, 255)?;
        self.store.write(|tx| {
            tx.quota_set(project, floating_ips)?;
            Ok(tx.quota_row(project)?.into())
        })
    }

    pub fn quota_show(&mut self, project: &str) -> Result<Quota> {
        self.store.read(|tx| Ok(tx.quota_row(project)?.into()))
    }

    /// Every project with a quota or a floating IP.
    pub fn quota_list(&mut self) -> Result<Vec<Quota>> {
        self.store
            .read(|tx| Ok(tx.quota_list()?.into_iter().map(Quota::from).collect()))
    }

    // --- data plane ---

    /// Brings freshly attached maps in line with the database: every pool's trie entries, every
    /// association, and the generation. For `floatip attach`. Needs `pool_prefix_add` to accept
    /// entries that are already there. Returns the number of associations repaired.
    pub fn resync(&mut self) -> Result<usize> {
        let (store, maps) = self.parts_attached()?;
        // In a write transaction only for its lock: no other floatip changes state meanwhile.
        store.write(|tx| {
            for (_, ranges) in load_pools(tx)? {
                trie_add(maps, &ranges.trie_entries())?;
            }
            let generation = tx.generation()?;
            let drifted = maps.generation()? != generation;
            maps.set_generation(GENERATION_DIRTY)?;
            let repaired = repair(tx, maps)?;
            if drifted {
                maps.rebuild_derived()?;
            }
            maps.set_generation(generation)?;
            Ok(repaired)
        })
    }
}

// --- helpers: transactions and maps ---

/// The drift check. Compares generations (cheap) and, only if they differ, the associations
/// themselves, repairing the maps to match the database. Returns the database generation.
fn sync_maps<M: Maps>(tx: &Tx<'_>, maps: &mut M) -> Result<u64> {
    let generation = tx.generation()?;
    if maps.generation()? == generation {
        return Ok(generation);
    }
    let repaired = repair(tx, maps)?;
    maps.rebuild_derived()?;
    maps.set_generation(generation)?;
    if repaired > 0 {
        eprintln!("floatip: maps had drifted from the database; repaired {repaired} entries");
    }
    Ok(generation)
}

/// Makes the association maps hold exactly the database's pairs; returns how many floating
/// IPs needed fixing (extra, missing or wrong).
fn repair<M: Maps>(tx: &Tx<'_>, maps: &mut M) -> Result<usize> {
    let want: HashMap<Ipv4Addr, Ipv4Addr> = tx.associations()?.into_iter().collect();
    let have = maps.nat_list()?;
    let reverse = maps.nat_list_reverse()?;
    let mut fixed_up: HashSet<Ipv4Addr> = HashSet::new();
    // Purging an extra pair also drops entries that mention either of its addresses, which
    // may belong to a wanted pair: those are re-added below. Reverse entries are checked too,
    // so a fixed->floating half pair left by a crash is found.
    let mut purged: HashSet<Ipv4Addr> = HashSet::new();
    for p in have.iter().chain(reverse.iter()) {
        if want.get(&p.floating) != Some(&p.fixed) {
            maps.nat_purge(p.floating, p.fixed)?;
            purged.extend([p.floating, p.fixed]);
            fixed_up.insert(p.floating);
        }
    }
    let have: HashSet<(Ipv4Addr, Ipv4Addr)> = have.iter().map(|p| (p.floating, p.fixed)).collect();
    let mut want: Vec<_> = want.into_iter().collect();
    want.sort_unstable();
    for (floating, fixed) in want {
        let intact = have.contains(&(floating, fixed))
            && !purged.contains(&floating)
            && !purged.contains(&fixed);
        if !intact {
            // Clear half pairs left by a crash before adding, so the add cannot collide.
            maps.nat_purge(floating, fixed)?;
            maps.nat_add(floating, fixed)?;
            if have.contains(&(floating, fixed)) {
                // Collateral of a purge above, not drift of its own.
                continue;
            }
            fixed_up.insert(floating);
        }
    }
    Ok(fixed_up.len())
}

/// Marks the maps dirty, applies `f` and returns the generation the transaction commits. On
/// failure the maps stay marked dirty, so the next command compares them in full.
fn update_maps<M: Maps>(
    tx: &Tx<'_>,
    maps: &mut M,
    f: impl FnOnce(&mut M) -> Result<()>,
) -> Result<u64> {
    let generation = tx.generation()?;
    maps.set_generation(GENERATION_DIRTY)?;
    crate::failpoint::hit("maps-marked-dirty");
    f(maps)?;
    crate::failpoint::hit("maps-updated-before-commit");
    Ok(generation)
}

/// After the commit: records the generation the maps now reflect.
fn finish<M: Maps>(maps: &mut M, generation: Option<u64>) {
    crate::failpoint::hit("committed-before-generation");
    if let Some(g) = generation
        && let Err(e) = maps.set_generation(g)
    {
        // The change is committed and in the maps; only the mark is stale, which costs the
        // next command a full comparison.
        eprintln!("floatip: warning: cannot record generation {g} in the maps: {e:#}");
    }
}

/// Adds trie entries, holes first so that no excluded address is ever briefly in a pool;
/// on failure removes what it added.
fn trie_add<M: Maps>(maps: &mut M, entries: &[TrieEntry]) -> Result<()> {
    let mut ordered: Vec<&TrieEntry> = entries.iter().collect();
    ordered.sort_by_key(|e| !e.excluded);
    for (i, e) in ordered.iter().enumerate() {
        if let Err(err) = maps.pool_prefix_add(e.addr, e.len, e.excluded) {
            for done in &ordered[..i] {
                let _ = maps.pool_prefix_del(done.addr, done.len);
            }
            return Err(err.context(format!(
                "cannot add pool prefix {}/{} to the maps",
                e.addr, e.len
            )));
        }
    }
    Ok(())
}

/// Removes trie entries, prefixes first (the mirror of [`trie_add`]); on failure puts back
/// what it removed.
fn trie_del<M: Maps>(maps: &mut M, entries: &[TrieEntry]) -> Result<()> {
    let mut ordered: Vec<&TrieEntry> = entries.iter().collect();
    ordered.sort_by_key(|e| e.excluded);
    for (i, e) in ordered.iter().enumerate() {
        if let Err(err) = maps.pool_prefix_del(e.addr, e.len) {
            for done in ordered[..i].iter().rev() {
                let _ = maps.pool_prefix_add(done.addr, done.len, done.excluded);
            }
            return Err(err.context(format!(
                "cannot remove pool prefix {}/{} from the maps",
                e.addr, e.len
            )));
        }
    }
    Ok(())
}

/// Sends gratuitous ARP for `floating` out of every external NIC so that
/// neighbours drop stale entries; a failure is reported, not fatal (the
/// mapping already works, neighbours just learn it later).
pub fn announce(dp: &Dataplane, floating: Ipv4Addr) {
    match dp.nics(crate::dataplane::Role::External) {
        Ok(nics) => {
            for (idx, mac) in nics {
                if let Err(e) = crate::garp::announce(idx, &mac, floating) {
                    eprintln!("floatip: warning: gratuitous ARP for {floating} failed: {e:#}");
                }
            }
        }
        Err(e) => eprintln!("floatip: warning: cannot list external NICs: {e:#}"),
    }
}

/// Fails unless the kernel routes `fixed` out of one of the gateway's internal NICs.
fn check_reachable<M: Maps>(maps: &M, fixed: Ipv4Addr) -> Result<()> {
    match maps.internal_route(fixed)? {
        Some(_) => Ok(()),
        None => {
            bail!("fixed IP {fixed} is not reachable through an internal interface of the gateway")
        }
    }
}

// --- helpers: validation ---

fn stored_ranges(pool: &PoolRow) -> Result<PoolRanges> {
    PoolRanges::from_stored(&pool.ranges, &pool.excludes)
        .with_context(|| format!("pool {} in the state database is corrupt", pool.name))
}

fn load_pools(tx: &Tx<'_>) -> Result<Vec<(String, PoolRanges)>> {
    tx.pool_list()?
        .into_iter()
        .map(|p| Ok((p.name.clone(), stored_ranges(&p)?)))
        .collect()
}

fn get_pool(tx: &Tx<'_>, name: &str) -> Result<PoolRow> {
    tx.pool_get(name)?
        .ok_or_else(|| anyhow!("pool {name} does not exist"))
}

fn pool_info(tx: &Tx<'_>, row: PoolRow) -> Result<Pool> {
    let ranges = stored_ranges(&row)?;
    let total = ranges.total();
    let allocated = tx.ip_count_in_pool(&row.name)?;
    Ok(Pool {
        ranges: ranges.ranges().iter().map(ToString::to_string).collect(),
        excludes: ranges.excludes().iter().map(ToString::to_string).collect(),
        name: row.name,
        external_interface: row.external_iface,
        total,
        allocated,
        free: total.saturating_sub(allocated),
        created_at: row.created_at,
    })
}

fn get_ip(tx: &Tx<'_>, floating: Ipv4Addr) -> Result<FloatingIp> {
    Ok(tx
        .ip_get(floating)?
        .ok_or_else(|| anyhow!("floating IP {floating} not found"))?
        .into())
}

/// The floating IP, as seen by `project`: another project's address is reported exactly as
/// a missing one, so that projects cannot probe each other's addresses.
fn owned_ip(tx: &Tx<'_>, floating: Ipv4Addr, project: Option<&str>) -> Result<FloatingIpRow> {
    match tx.ip_get(floating)? {
        Some(row) if project.is_none_or(|p| row.project.as_deref() == Some(p)) => Ok(row),
        _ => bail!("floating IP {floating} not found"),
    }
}

fn validate_fixed(fixed: Ipv4Addr) -> Result<()> {
    if fixed.is_unspecified() || fixed.is_broadcast() || fixed.is_multicast() || fixed.is_loopback()
    {
        bail!("fixed IP {fixed} is not a unicast host address");
    }
    Ok(())
}

fn check_fixed_outside_pools(pools: &[(String, PoolRanges)], fixed: Ipv4Addr) -> Result<()> {
    // Coverage, not usable addresses: a pool's network and excluded addresses are on the
    // external network too.
    if let Some((name, _)) = pools.iter().find(|(_, r)| r.covers(fixed)) {
        bail!(
            "fixed IP {fixed} lies in floating IP pool {name}: an instance on the external network needs no floating IP"
        );
    }
    Ok(())
}

/// Refuses a pool holding an address of the gateway itself: its traffic would be translated
/// away from the gateway.
fn check_no_gateway_addr(
    name: &str,
    ranges: &PoolRanges,
    local: &[(String, Ipv4Addr)],
) -> Result<()> {
    if let Some((iface, ip)) = local.iter().find(|(_, ip)| ranges.contains(*ip)) {
        bail!(
            "pool {name} contains {ip}, an address of the gateway's interface {iface}; leave it out with --exclude {ip}"
        );
    }
    Ok(())
}

/// Names end up in table columns and in the bulk file format: no blanks, no control
/// characters.
fn validate_name(what: &str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() || name.len() > max {
        bail!("{what} must be 1 to {max} characters long");
    }
    if name.starts_with('-') || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("{what} '{name}' must not start with '-' or contain blanks or control characters");
    }
    Ok(())
}

fn validate_text(what: &str, text: &str, max: usize) -> Result<()> {
    if text.len() > max || text.chars().any(char::is_control) {
        bail!("{what} must be at most {max} characters, without control characters");
    }
    Ok(())
}

fn validate_iface(name: &str) -> Result<()> {
    // IFNAMSIZ is 16 including the terminating NUL.
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', ':'])
        || name.chars().any(|c| c.is_whitespace())
    {
        bail!("'{name}' is not a valid interface name");
    }
    Ok(())
}

/// Every IPv4 address configured on the gateway's interfaces.
pub fn gateway_ipv4_addrs() -> Result<Vec<(String, Ipv4Addr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot list the gateway's addresses");
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        // SAFETY: a non-null ifa_addr of family AF_INET points to a sockaddr_in; ifa_name is a
        // NUL-terminated string.
        unsafe {
            if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                out.push((
                    CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned(),
                    ip,
                ));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::BTreeMap, path::PathBuf, rc::Rc};

    use super::*;
    use crate::{addr::parse_bulk, store::TempDir};

    /// In-memory maps, shared with the test so it can look inside and tamper.
    #[derive(Default)]
    struct FakeState {
        fwd: BTreeMap<Ipv4Addr, Ipv4Addr>,
        rev: BTreeMap<Ipv4Addr, Ipv4Addr>,
        trie: BTreeMap<(Ipv4Addr, u8), bool>,
        generation: u64,
        /// Operations seen, for checking what a command did.
        ops: Vec<String>,
        /// Fail the next nat_add / nat_add_bulk.
        fail_add: bool,
    }

    #[derive(Clone, Default)]
    struct Fake(Rc<RefCell<FakeState>>);

    impl Maps for Fake {
        fn nat_add(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
            let mut s = self.0.borrow_mut();
            s.ops.push(format!("add {floating} {fixed}"));
            if std::mem::take(&mut s.fail_add) {
                bail!("map full");
            }
            if s.fwd.contains_key(&floating) || s.rev.contains_key(&fixed) {
                bail!("already mapped");
            }
            s.fwd.insert(floating, fixed);
            s.rev.insert(fixed, floating);
            Ok(())
        }
        fn nat_move(&mut self, floating: Ipv4Addr, new_fixed: Ipv4Addr) -> Result<()> {
            let mut s = self.0.borrow_mut();
            s.ops.push(format!("move {floating} {new_fixed}"));
            if s.rev.contains_key(&new_fixed) {
                bail!("fixed already mapped");
            }
            let old = s
                .fwd
                .insert(floating, new_fixed)
                .ok_or_else(|| anyhow!("not mapped"))?;
            s.rev.remove(&old);
            s.rev.insert(new_fixed, floating);
            Ok(())
        }
        fn nat_del(&mut self, floating: Ipv4Addr) -> Result<Ipv4Addr> {
            let mut s = self.0.borrow_mut();
            s.ops.push(format!("del {floating}"));
            let fixed = s
                .fwd
                .remove(&floating)
                .ok_or_else(|| anyhow!("not mapped"))?;
            s.rev.remove(&fixed);
            Ok(fixed)
        }
        fn nat_purge(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
            let mut s = self.0.borrow_mut();
            s.ops.push(format!("purge {floating} {fixed}"));
            s.fwd.remove(&floating);
            s.rev.remove(&fixed);
            s.fwd.retain(|_, v| *v != fixed);
            s.rev.retain(|_, v| *v != floating);
            Ok(())
        }
        fn nat_list(&self) -> Result<Vec<Pair>> {
            Ok(self
                .0
                .borrow()
                .fwd
                .iter()
                .map(|(&floating, &fixed)| Pair { floating, fixed })
                .collect())
        }
        fn nat_list_reverse(&self) -> Result<Vec<Pair>> {
            Ok(self
                .0
                .borrow()
                .rev
                .iter()
                .map(|(&fixed, &floating)| Pair { floating, fixed })
                .collect())
        }
        fn internal_route(&self, fixed: Ipv4Addr) -> Result<Option<String>> {
            Ok(fixed.octets()[0].eq(&10).then(|| "int0".to_string()))
        }
        fn nat_add_bulk(&mut self, pairs: &[Pair]) -> Result<()> {
            self.0
                .borrow_mut()
                .ops
                .push(format!("bulk {}", pairs.len()));
            let fail = std::mem::take(&mut self.0.borrow_mut().fail_add);
            for (i, p) in pairs.iter().enumerate() {
                if fail && i == pairs.len() / 2 {
                    bail!("map full");
                }
                let mut s = self.0.borrow_mut();
                s.fwd.insert(p.floating, p.fixed);
                s.rev.insert(p.fixed, p.floating);
            }
            Ok(())
        }
        fn pool_prefix_add(&mut self, addr: Ipv4Addr, len: u8, excluded: bool) -> Result<()> {
            self.0.borrow_mut().trie.insert((addr, len), excluded);
            Ok(())
        }
        fn pool_prefix_del(&mut self, addr: Ipv4Addr, len: u8) -> Result<()> {
            self.0
                .borrow_mut()
                .trie
                .remove(&(addr, len))
                .map(drop)
                .ok_or_else(|| anyhow!("no such prefix"))
        }
        fn generation(&self) -> Result<u64> {
            Ok(self.0.borrow().generation)
        }
        fn set_generation(&mut self, generation: u64) -> Result<()> {
            self.0.borrow_mut().generation = generation;
            Ok(())
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    struct Env {
        _dir: TempDir,
        path: PathBuf,
        fake: Fake,
    }

    impl Env {
        fn new(tag: &str) -> Self {
            let dir = TempDir::new(tag);
            let path = dir.0.join("state.db");
            Self {
                _dir: dir,
                path,
                fake: Fake::default(),
            }
        }

        fn attached(&self) -> Control<Fake> {
            let mut c = Control::new(Store::open(&self.path).unwrap(), Some(self.fake.clone()));
            c.local_addrs = || {
                Ok(vec![
                    ("lo".into(), ip("127.0.0.1")),
                    ("eth0".into(), ip("198.51.100.1")),
                ])
            };
            c
        }

        fn detached(&self) -> Control<Fake> {
            let mut c = Control::new(Store::open(&self.path).unwrap(), None);
            c.local_addrs = || Ok(vec![]);
            c
        }

        fn maps(&self) -> std::cell::Ref<'_, FakeState> {
            self.fake.0.borrow()
        }

        fn db_pairs(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
            Store::open(&self.path)
                .unwrap()
                .read(|tx| tx.associations())
                .unwrap()
        }

        fn map_pairs(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
            self.maps().fwd.iter().map(|(a, b)| (*a, *b)).collect()
        }

        fn db_generation(&self) -> u64 {
            Store::open(&self.path)
                .unwrap()
                .read(|tx| tx.generation())
                .unwrap()
        }

        /// The invariant after every command: maps == database, generations equal.
        fn assert_in_step(&self) {
            assert_eq!(self.db_pairs(), self.map_pairs());
            let rev: Vec<_> = self
                .maps()
                .rev
                .iter()
                .map(|(x, f)| (*f, *x))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            assert_eq!(rev, self.map_pairs(), "reverse map mirrors the forward map");
            assert_eq!(self.maps().generation, self.db_generation());
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
    fn with_pools(env: &Env) -> Control<Fake> {
        let mut c = env.attached();
        c.pool_create("public", &ranges(&["203.0.113.0/29"], &[]), Some("eth0"))
            .unwrap();
        c.pool_create("small", &ranges(&["192.0.2.0/30"], &[]), None)
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
            )
            .unwrap();
        assert_eq!((p.total, p.allocated, p.free), (253, 0, 253));
        assert_eq!(p.excludes, ["203.0.113.9"]);
        let trie: Vec<_> = env
            .maps()
            .trie
            .iter()
            .map(|(&(a, l), &x)| (a.to_string(), l, x))
            .collect();
        assert_eq!(
            trie,
            [
                ("203.0.113.0".into(), 24, false),
                ("203.0.113.0".into(), 32, true),
                ("203.0.113.9".into(), 32, true),
                ("203.0.113.255".into(), 32, true),
            ]
        );

        assert_eq!(
            err(c.pool_create("public", &ranges(&["192.0.2.0/24"], &[]), None)),
            "pool public already exists"
        );
        assert_eq!(
            err(c.pool_create("other", &ranges(&["203.0.113.128-203.0.114.5"], &[]), None)),
            "pool other (203.0.113.128-203.0.114.5) overlaps pool public (203.0.113.0/24)"
        );
        assert_eq!(
            err(c.pool_create("mine", &ranges(&["198.51.100.0/24"], &[]), None)),
            "pool mine contains 198.51.100.1, an address of the gateway's interface eth0; leave it out with \
             --exclude 198.51.100.1"
        );
        c.pool_create(
            "mine",
            &ranges(&["198.51.100.0/24"], &["198.51.100.1"]),
            None,
        )
        .unwrap();
        assert!(
            err(c.pool_create("bad name", &ranges(&["192.0.2.0/24"], &[]), None))
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
        assert_eq!(env.maps().trie.len(), 4, "only public's entries are left");
        c.ip_delete(ip("203.0.113.1"), None).unwrap();
        c.ip_delete(ip("203.0.113.2"), None).unwrap();
        c.pool_delete("public").unwrap();
        assert!(env.maps().trie.is_empty());
        assert!(c.pool_list().unwrap().is_empty());
    }

    #[test]
    fn pools_work_without_the_data_plane() {
        let env = Env::new("ctl-pool-detached");
        let mut c = env.detached();
        c.pool_create("public", &ranges(&["203.0.113.0/29"], &[]), None)
            .unwrap();
        let fip = c
            .ip_create("public", None, Some("demo"), Some("web"))
            .unwrap();
        assert_eq!(fip.floating_ip_address, ip("203.0.113.1"));
        assert_eq!(fip.status, Status::Down);
        c.ip_delete(ip("203.0.113.1"), None).unwrap();
        c.pool_delete("public").unwrap();
        assert!(env.maps().trie.is_empty() && env.maps().ops.is_empty());
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

        let listed = |c: &mut Control<Fake>, q: IpQuery| c.ip_list(&q).unwrap().len();
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
                    status: Some(Status::Active),
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
            env.maps().ops.is_empty(),
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
        assert_eq!(r.status, Status::Active);
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
        let ops = env.maps().ops.len();
        c.ip_associate(&assoc("203.0.113.1", "10.0.0.5")).unwrap();
        assert_eq!(env.maps().ops.len(), ops);

        let moved = c
            .ip_associate(&Associate {
                force: true,
                ..assoc("203.0.113.1", "10.0.0.6")
            })
            .unwrap();
        assert_eq!(moved.fixed_ip_address, Some(ip("10.0.0.6")));
        assert_eq!(env.maps().ops.last().unwrap(), "move 203.0.113.1 10.0.0.6");
        env.assert_in_step();

        // The freed fixed IP can take another floating IP.
        c.ip_associate(&assoc("203.0.113.2", "10.0.0.5")).unwrap();
        env.assert_in_step();

        let d = c.ip_disassociate(ip("203.0.113.2"), Some("demo")).unwrap();
        assert_eq!(
            (d.status, d.fixed_ip_address, d.instance),
            (Status::Down, None, None)
        );
        assert_eq!(
            c.ip_disassociate(ip("203.0.113.2"), None).unwrap().status,
            Status::Down
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
        let not_attached = "the data plane is not attached; run `floatip attach --external IFACE --internal IFACE` first";
        // Checked before anything else, even the existence of the address.
        assert_eq!(
            err(c.ip_associate(&assoc("203.0.113.4", "10.0.0.5"))),
            not_attached
        );
        assert_eq!(
            err(c.ip_associate(&assoc("203.0.113.1", "10.0.0.5"))),
            not_attached
        );
        assert_eq!(
            err(c.ip_disassociate(ip("203.0.113.1"), None)),
            not_attached
        );
        assert_eq!(err(c.ip_associate_bulk(&[], None)), not_attached);
        assert!(env.db_pairs().is_empty());

        let mut a = env.attached();
        a.ip_associate(&assoc("203.0.113.1", "10.0.0.5")).unwrap();
        // Deleting an associated address needs the maps; the row stays.
        assert_eq!(err(c.ip_delete(ip("203.0.113.1"), None)), not_attached);
        assert_eq!(env.db_pairs().len(), 1);
        assert_eq!(env.db_generation(), 1);
    }

    #[test]
    fn failed_map_update_rolls_back_and_marks_the_maps() {
        let env = Env::new("ctl-fail");
        let mut c = with_pools(&env);
        c.ip_create("public", None, None, None).unwrap();
        c.ip_create("public", None, None, None).unwrap();
        env.fake.0.borrow_mut().fail_add = true;
        assert_eq!(
            err(c.ip_associate(&assoc("203.0.113.1", "10.0.0.5"))),
            "map full"
        );
        assert!(env.db_pairs().is_empty());
        assert_eq!(env.db_generation(), 0);
        assert_eq!(env.maps().generation, GENERATION_DIRTY);
        // The next command compares in full, finds nothing wrong and carries on.
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
            // Tamper: one missing, one wrong, one extra that steals a wanted fixed IP, and a
            // generation that no longer matches.
            let mut s = env.fake.0.borrow_mut();
            s.fwd.remove(&ip("203.0.113.1"));
            s.rev.remove(&ip("10.0.0.1"));
            s.fwd.insert(ip("203.0.113.2"), ip("10.0.0.99"));
            s.rev.remove(&ip("10.0.0.2"));
            s.rev.insert(ip("10.0.0.99"), ip("203.0.113.2"));
            s.fwd.insert(ip("203.0.113.5"), ip("10.0.0.3"));
            s.generation = 77;
        }
        c.ip_associate(&assoc("203.0.113.4", "10.0.0.4")).unwrap();
        env.assert_in_step();
        assert_eq!(env.map_pairs().len(), 4);

        // Generation equal: no comparison at all (the cost of an associate stays constant).
        let ops = env.maps().ops.len();
        c.ip_disassociate(ip("203.0.113.4"), None).unwrap();
        assert_eq!(env.maps().ops[ops..], ["del 203.0.113.4".to_string()]);

        // A crash after the commit but before the final mark: repaired, nothing to fix.
        env.fake.0.borrow_mut().generation = GENERATION_DIRTY;
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
        {
            let mut s = env.fake.0.borrow_mut();
            s.fwd.clear();
            s.rev.clear();
            s.fwd.insert(ip("203.0.113.3"), ip("10.0.0.3"));
            s.rev.insert(ip("10.0.0.3"), ip("203.0.113.3"));
        }
        let mut store = Store::open(&env.path).unwrap();
        let mut fake = env.fake.clone();
        let n = store.write(|tx| repair(tx, &mut fake)).unwrap();
        assert_eq!(n, 3);
        assert_eq!(env.map_pairs(), env.db_pairs());
        assert_eq!(store.write(|tx| repair(tx, &mut fake)).unwrap(), 0);
    }

    #[test]
    fn bulk_association() {
        let env = Env::new("ctl-bulk");
        let mut c = with_pools(&env);
        for _ in 0..6 {
            c.ip_create("public", None, Some("demo"), None).unwrap();
        }
        c.ip_associate(&assoc("203.0.113.6", "10.0.0.6")).unwrap();
        let file =
            "# bulk\n203.0.113.1 10.0.0.1 web-1\n203.0.113.2 10.0.0.2\n203.0.113.6 10.0.0.6\n";
        let entries = parse_bulk(file).unwrap();
        let out = c.ip_associate_bulk(&entries, Some("demo")).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].instance.as_deref(), Some("web-1"));
        assert!(out.iter().all(|r| r.status == Status::Active));
        assert_eq!(env.maps().ops.last().unwrap(), "bulk 2");
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

        // The maps fail half way through the batch: all of it is taken back out.
        env.fake.0.borrow_mut().fail_add = true;
        let good = parse_bulk("203.0.113.3 10.0.0.3\n203.0.113.4 10.0.0.4\n203.0.113.5 10.0.0.5\n")
            .unwrap();
        assert_eq!(err(c.ip_associate_bulk(&good, None)), "map full");
        assert_eq!(env.map_pairs(), env.db_pairs());
        c.ip_associate_bulk(&good, None).unwrap();
        env.assert_in_step();
        assert_eq!(env.map_pairs().len(), 6);
    }

    #[test]
    fn resync_fills_fresh_maps() {
        let env = Env::new("ctl-resync");
        let mut c = with_pools(&env);
        c.ip_create("public", None, None, None).unwrap();
        c.ip_associate(&assoc("203.0.113.1", "10.0.0.1")).unwrap();
        *env.fake.0.borrow_mut() = FakeState::default();
        assert_eq!(c.resync().unwrap(), 1);
        env.assert_in_step();
        assert_eq!(env.maps().trie.len(), 1 + 2 + 1 + 2);
    }

    #[test]
    fn gateway_addresses_include_loopback() {
        let addrs = gateway_ipv4_addrs().unwrap();
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
            status: Status::Down,
            description: None,
            created_at: "2024-01-01T00:00:00Z".into(),
        };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"id":1,"floating_ip_address":"203.0.113.1","fixed_ip_address":null,"pool":"public","project":"demo","instance":null,"status":"DOWN","description":null,"created_at":"2024-01-01T00:00:00Z"}"#
        );
    }
}
