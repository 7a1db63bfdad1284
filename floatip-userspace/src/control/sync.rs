//! Keeping the maps in step with the database: the generation check before every change, the
//! repair after drift, the dirty mark around a change, and pool prefixes in trie order.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use anyhow::Result;

use super::{Control, GENERATION_DIRTY, validate::load_pools};
use crate::{addr::TrieEntry, dataplane::Dataplane, store::Tx};

impl Control {
    /// Brings freshly attached maps in line with the database: every pool's trie entries, every
    /// association, and the generation. For `floatip attach`. Needs `pool_prefix_add` to accept
    /// entries that are already there. Returns the number of associations repaired.
    pub fn resync(&mut self) -> Result<usize> {
        let (store, maps) = self.parts_attached()?;
        // In a write transaction only for its lock: no other floatip changes state meanwhile.
        store.write(|tx| {
            let mut wanted = HashSet::new();
            for (_, ranges) in load_pools(tx)? {
                let entries = ranges.trie_entries();
                trie_add(maps, &entries)?;
                wanted.extend(entries.iter().map(|e| (e.addr, e.len)));
            }
            // Prefixes of pools this database does not have (maps adopted from another one,
            // or a pool deleted while detached) go, after this database's are all in.
            for (addr, len, _) in maps.pool_prefixes()? {
                if !wanted.contains(&(addr, len)) {
                    maps.pool_prefix_del(addr, len)?;
                }
            }
            let generation = tx.generation()?;
            let drifted = maps.generation()? != generation;
            maps.set_generation(GENERATION_DIRTY)?;
            let repaired = repair(tx, maps)?;
            if drifted {
                maps.rebuild_spoof_filter()?;
            }
            maps.set_generation(generation)?;
            maps.set_db_identity(tx.identity()?)?;
            Ok(repaired)
        })
    }
}

/// The drift check. Compares generations (cheap) and, only if they differ, the associations
/// themselves, repairing the maps to match the database. Returns the database generation.
pub(super) fn sync_maps(tx: &Tx<'_>, maps: &mut Dataplane) -> Result<u64> {
    let generation = tx.generation()?;
    if maps.generation()? == generation {
        return Ok(generation);
    }
    let repaired = repair(tx, maps)?;
    maps.rebuild_spoof_filter()?;
    maps.set_generation(generation)?;
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
    maps.set_generation(GENERATION_DIRTY)?;
    crate::failpoint::hit("maps-marked-dirty");
    f(maps)?;
    crate::failpoint::hit("maps-updated-before-commit");
    Ok(generation)
}

/// After the commit: records the generation the maps now reflect.
pub(super) fn finish(maps: &mut Dataplane, generation: Option<u64>) {
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
pub(super) fn trie_add(maps: &mut Dataplane, entries: &[TrieEntry]) -> Result<()> {
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
pub(super) fn trie_del(maps: &mut Dataplane, entries: &[TrieEntry]) -> Result<()> {
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
