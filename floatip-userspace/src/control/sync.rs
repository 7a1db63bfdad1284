//! Keeping the maps in step with the database: the generation check before every change, the
//! repair after drift, the dirty mark around a change, and pool prefixes in trie order.

use std::{
    cell::Cell,
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use anyhow::Result;
use floatip_common::{POOL_ANY_NIC, POOL_NO_NIC};

use super::{Control, GENERATION_DIRTY, batch, validate::stored_ranges};
use crate::{
    addr::TrieEntry,
    dataplane::Dataplane,
    iface,
    store::{PoolRow, Tx},
};

// Per process, not per `Control`: the agent opens a new one after a detach and attach, and
// what `/metrics` shows is counted since the process started, as Prometheus counters are.
static REPAIRS: AtomicU64 = AtomicU64::new(0);
static REPAIRED_PAIRS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// When this thread's last change reached the maps (see [`take_maps_written`]).
    static MAPS_WRITTEN: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Repairs this process made since it started: how often maps and database differed when
/// compared, and how many floating IPs that fixed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairCounts {
    pub repairs: u64,
    pub pairs: u64,
}

pub fn repair_counts() -> RepairCounts {
    RepairCounts {
        repairs: REPAIRS.load(Ordering::Relaxed),
        pairs: REPAIRED_PAIRS.load(Ordering::Relaxed),
    }
}

fn count_repair(pairs: usize) {
    if pairs > 0 {
        REPAIRS.fetch_add(1, Ordering::Relaxed);
        REPAIRED_PAIRS.fetch_add(pairs as u64, Ordering::Relaxed);
    }
}

/// When the last association change made on this thread was in the maps (traffic follows it
/// from then on, before the commit), and forgets it: the agent's time from a request to the
/// maps.
pub fn take_maps_written() -> Option<Instant> {
    MAPS_WRITTEN.take()
}

impl Control {
    /// Brings freshly attached maps in line with the database: every pool's trie entries, every
    /// association, and the generation. For `floatip attach`. Needs `pool_prefix_add` to accept
    /// entries that are already there. Returns the number of associations repaired.
    pub fn resync(&mut self) -> Result<usize> {
        self.resync_pools().map(|(repaired, _)| repaired)
    }

    /// [`Self::resync`], also returning the pools it read.
    pub(super) fn resync_pools(&mut self) -> Result<(usize, Vec<PoolRow>)> {
        let (store, maps) = self.parts_attached()?;
        // In a write transaction only for its lock: no other floatip changes state meanwhile.
        store.write(|tx| {
            let mut wanted = HashSet::new();
            let pools = tx.pool_list()?;
            for pool in &pools {
                let entries = stored_ranges(pool)?.trie_entries();
                // Overwrites entries already there: a NIC that came back has another ifindex.
                trie_add(maps, &entries, super::group::answer_nic(pool))?;
                wanted.extend(entries.iter().map(|e| (e.addr, e.len)));
            }
            // Prefixes of pools this database does not have (maps adopted from another one,
            // or a pool deleted while detached) go, after this database's are all in.
            for (addr, len, _, _) in maps.pool_prefixes()? {
                if !wanted.contains(&(addr, len)) {
                    maps.pool_prefix_del(addr, len)?;
                }
            }
            let generation = tx.generation()?;
            let drifted = maps.generation()? != generation;
            maps.set_generation(GENERATION_DIRTY)?;
            // Not counted as a repair: filling fresh maps is what attach is for.
            let repaired = repair(tx, maps)?;
            if drifted {
                maps.rebuild_spoof_filter()?;
            }
            maps.set_generation(generation)?;
            maps.set_db_identity(tx.identity()?)?;
            Ok((repaired, pools.clone()))
        })
    }
}

/// The drift check. Compares generations (cheap) and, only if they differ, the associations
/// themselves, repairing the maps to match the database. Returns the database generation.
pub(super) fn sync_maps(tx: &Tx<'_>, maps: &mut Dataplane) -> Result<u64> {
    let generation = tx.generation()?;
    if maps.generation()? == generation || batch::maps_at(generation) {
        return Ok(generation);
    }
    batch::maps_changing();
    let repaired = repair(tx, maps)?;
    count_repair(repaired);
    maps.rebuild_spoof_filter()?;
    batch::record_generation(maps, generation)?;
    if repaired > 0 {
        eprintln!("floatip: maps had drifted from the database; repaired {repaired} entries");
    }
    Ok(generation)
}

/// Makes the association maps hold exactly the database's pairs; returns how many floating
/// IPs needed fixing (extra, missing or wrong).
pub(super) fn repair(tx: &Tx<'_>, maps: &mut Dataplane) -> Result<usize> {
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
pub(super) fn update_maps(
    tx: &Tx<'_>,
    maps: &mut Dataplane,
    f: impl FnOnce(&mut Dataplane) -> Result<()>,
) -> Result<u64> {
    let generation = tx.generation()?;
    batch::maps_changing();
    maps.set_generation(GENERATION_DIRTY)?;
    crate::failpoint::hit("maps-marked-dirty");
    f(maps)?;
    MAPS_WRITTEN.set(Some(Instant::now()));
    crate::failpoint::hit("maps-updated-before-commit");
    Ok(generation)
}

/// After the commit (in a batch: after the change's savepoint; the batch records it until its
/// commit): records the generation the maps now reflect.
pub(super) fn finish(maps: &mut Dataplane, generation: Option<u64>) {
    crate::failpoint::hit("committed-before-generation");
    if let Some(g) = generation
        && let Err(e) = batch::record_generation(maps, g)
    {
        // The change is committed and in the maps; only the mark is stale, which costs the
        // next command a full comparison.
        eprintln!("floatip: warning: cannot record generation {g} in the maps: {e:#}");
    }
}

/// The ifindex the trie entries of a pool with external NIC `nic` carry: the only NIC that
/// answers ARP for its addresses. A NIC this gateway does not have (renamed, unplugged) answers
/// nowhere rather than everywhere: the pool's network is not the others'.
pub(super) fn pool_nic(nic: Option<&str>) -> u32 {
    match nic {
        None => POOL_ANY_NIC,
        Some(name) => iface::index(name).unwrap_or(POOL_NO_NIC),
    }
}

/// Adds trie entries for a pool on NIC `nic` ([`pool_nic`]), holes first so that no excluded
/// address is ever briefly in a pool; on failure removes what it added.
pub(super) fn trie_add(maps: &mut Dataplane, entries: &[TrieEntry], nic: u32) -> Result<()> {
    let mut ordered: Vec<&TrieEntry> = entries.iter().collect();
    ordered.sort_by_key(|e| !e.excluded);
    for (i, e) in ordered.iter().enumerate() {
        if let Err(err) =
            maps.pool_prefix_add_fenced(e.addr, e.len, e.excluded, nic, super::group::in_group())
        {
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

/// Removes the trie entries of a pool on NIC `nic`, prefixes first (the mirror of
/// [`trie_add`]); on failure puts back what it removed.
pub(super) fn trie_del(maps: &mut Dataplane, entries: &[TrieEntry], nic: u32) -> Result<()> {
    let mut ordered: Vec<&TrieEntry> = entries.iter().collect();
    ordered.sort_by_key(|e| e.excluded);
    for (i, e) in ordered.iter().enumerate() {
        if let Err(err) = maps.pool_prefix_del(e.addr, e.len) {
            for done in ordered[..i].iter().rev() {
                let _ = maps.pool_prefix_add(done.addr, done.len, done.excluded, nic);
            }
            return Err(err.context(format!(
                "cannot remove pool prefix {}/{} from the maps",
                e.addr, e.len
            )));
        }
    }
    Ok(())
}

/// Whether the maps are in step with the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// Same generation, same pairs.
    Clean,
    /// Marked as being changed: a command was interrupted (or `nat` plumbing ran); the next
    /// association command compares and repairs.
    Dirty,
    /// Another generation, or other pairs, without the mark.
    Drifted,
}

/// One floating IP on which database and maps disagree.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PairDifference {
    pub floating: Ipv4Addr,
    /// The fixed IP the database associates it with.
    pub database: Option<Ipv4Addr>,
    /// The fixed IP of its floating->fixed entry in the maps.
    pub maps: Option<Ipv4Addr>,
    /// The fixed IP of a fixed->floating entry pointing at it that has no matching other half.
    pub maps_reverse: Option<Ipv4Addr>,
}

/// What `floatip check` (and `status`) report, and `floatip repair` fixed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncReport {
    pub state: SyncState,
    pub database_generation: u64,
    pub maps_generation: u64,
    pub differences: Vec<PairDifference>,
}

/// Compares the database's pairs with both halves of the maps' pairs.
fn compare(tx: &Tx<'_>, maps: &Dataplane) -> Result<SyncReport> {
    let want: HashMap<Ipv4Addr, Ipv4Addr> = tx.associations()?.into_iter().collect();
    let fwd: HashMap<Ipv4Addr, Ipv4Addr> = maps
        .nat_list()?
        .into_iter()
        .map(|p| (p.floating, p.fixed))
        .collect();
    let rev: HashMap<Ipv4Addr, Ipv4Addr> = maps
        .nat_list_reverse()?
        .into_iter()
        .map(|p| (p.fixed, p.floating))
        .collect();
    let mut floating: Vec<Ipv4Addr> = want
        .keys()
        .chain(fwd.keys())
        .chain(rev.values())
        .copied()
        .collect();
    floating.sort_unstable();
    floating.dedup();
    let mut differences = Vec::new();
    for f in floating {
        let database = want.get(&f).copied();
        let forward = fwd.get(&f).copied();
        // A reverse entry naming `f` whose fixed IP is not `f`'s forward target is half a pair.
        let stray_reverse = rev
            .iter()
            .find(|(x, ff)| **ff == f && forward != Some(**x))
            .map(|(x, _)| *x);
        let intact = forward.is_some_and(|x| rev.get(&x) == Some(&f));
        if database == forward && intact && stray_reverse.is_none() {
            continue;
        }
        if database.is_none() && forward.is_none() && stray_reverse.is_none() {
            continue;
        }
        differences.push(PairDifference {
            floating: f,
            database,
            maps: forward,
            maps_reverse: stray_reverse.or_else(|| forward.filter(|_| !intact)),
        });
    }
    let database_generation = tx.generation()?;
    let maps_generation = maps.generation()?;
    let state = if maps_generation == GENERATION_DIRTY {
        SyncState::Dirty
    } else if maps_generation != database_generation || !differences.is_empty() {
        SyncState::Drifted
    } else {
        SyncState::Clean
    };
    Ok(SyncReport {
        state,
        database_generation,
        maps_generation,
        differences,
    })
}

impl Control {
    /// Compares the maps with the database, changing nothing.
    pub fn check(&mut self) -> Result<SyncReport> {
        let (store, maps) = self.parts_attached()?;
        store.read(|tx| compare(tx, maps))
    }

    /// Makes the maps match the database and returns what differed before.
    pub fn repair(&mut self) -> Result<SyncReport> {
        let (store, maps) = self.parts_attached()?;
        store.write(|tx| {
            let report = compare(tx, maps)?;
            if report.state != SyncState::Clean {
                maps.set_generation(GENERATION_DIRTY)?;
                count_repair(repair(tx, maps)?);
                maps.rebuild_spoof_filter()?;
                maps.set_generation(tx.generation()?)?;
            }
            Ok(report)
        })
    }
}
