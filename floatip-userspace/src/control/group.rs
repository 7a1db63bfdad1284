//! One gateway of many: applying the changes other gateways made to the shared state, and
//! answering only for the pools this gateway owns.
//!
//! Every gateway holds every association in its maps (translation is stateless, so any of
//! them can carry any packet); what ownership decides is who answers ARP for a pool's
//! addresses and holds the tenant-side gateway address of that pool, i.e. where the routers
//! and the instances send their frames. A process not in a group (`floatip` on one gateway,
//! the agent on SQLite) owns every pool.

use std::{collections::BTreeSet, net::Ipv4Addr, sync::RwLock};

use anyhow::{Context, Result};

use super::{
    Control, GENERATION_DIRTY, batch,
    gateway::announce,
    sync::{repair, trie_add, trie_del},
    validate::stored_ranges,
};
use crate::{
    addr::PoolRanges,
    dataplane::Dataplane,
    garp, iface,
    store::{Change, PoolRow},
};

/// The pools this process answers for; `None`: not in a group, every pool.
static OWNED: RwLock<Option<BTreeSet<String>>> = RwLock::new(None);

/// Whether this process answers for `pool`.
pub fn owns(pool: &str) -> bool {
    OWNED
        .read()
        .map(|o| o.as_ref().is_none_or(|set| set.contains(pool)))
        .unwrap_or(false)
}

/// Whether this process is a gateway of a group: its pools' trie entries are then fenced
/// (answered only until the deadline [`Fence::renew`] sets).
pub fn in_group() -> bool {
    OWNED.read().is_ok_and(|o| o.is_some())
}

/// A tenant-side gateway address: held (on `iface`) by whichever gateway owns `pool`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantGateway {
    pub pool: String,
    pub address: Ipv4Addr,
    pub len: u8,
    pub iface: String,
}

impl std::str::FromStr for TenantGateway {
    type Err = String;

    /// `POOL=ADDRESS/LEN@IFACE`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("tenant gateway {s:?} is not POOL=ADDRESS/LEN@IFACE");
        let (pool, rest) = s.split_once('=').ok_or_else(bad)?;
        let (net, nic) = rest.split_once('@').ok_or_else(bad)?;
        let (addr, len) = net.split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if pool.is_empty() || nic.is_empty() || !(1..=32).contains(&len) {
            return Err(bad());
        }
        Ok(Self {
            pool: pool.to_owned(),
            address,
            len,
            iface: nic.to_owned(),
        })
    }
}

/// The gateway among `live` that should own `pool`: the highest rendezvous hash of the two
/// names, so every gateway computes the same answer, pools spread evenly, and a gateway that
/// joins or leaves moves only the pools it wins or held.
pub fn preferred_owner<'a>(pool: &str, live: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    use blake2::{Blake2s256, Digest};
    live.into_iter().max_by_key(|name| {
        let digest = Blake2s256::new()
            .chain_update(pool.as_bytes())
            .chain_update([0])
            .chain_update(name.as_bytes())
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(first), *name)
    })
}

impl Control {
    /// The gateway group, when the state is in etcd.
    pub fn group_view(&mut self) -> Result<Option<crate::store::GroupView>> {
        self.store.group_view()
    }

    /// Brings the maps to the state as it is now, in full (a gateway's start, or a watch
    /// that cannot resume): returns the revision read, and the pools.
    pub fn group_resync(&mut self) -> Result<(i64, Vec<PoolRow>)> {
        let (store, maps) = self.parts()?;
        let pools = match maps {
            // Nothing to bring up to date; the revision still counts as applied.
            None => store.read(|tx| tx.pool_list())?,
            Some(maps) => store.read(|tx| {
                let rows = tx.pool_list()?;
                for pool in &rows {
                    let entries = stored_ranges(pool)?.trie_entries();
                    trie_add(maps, &entries, answer_nic(pool))?;
                }
                batch::maps_changing();
                maps.set_generation(GENERATION_DIRTY)?;
                repair(tx, maps)?;
                maps.rebuild_spoof_filter()?;
                batch::record_generation(maps, tx.generation()?)?;
                Ok(rows)
            })?,
        };
        Ok((store.last_revision().unwrap_or(0), pools))
    }

    /// Applies changes another gateway (or this one) made to the state: pools' trie entries
    /// and associations, each made to match the row it now has. Idempotent: a change already
    /// in the maps (this gateway's own writes) changes nothing. On failure the maps stay
    /// marked dirty, so the next command compares them in full.
    pub fn group_apply(&mut self, changes: &[Change]) -> Result<()> {
        let announcer = self.announcer.clone();
        let (store, maps) = self.parts()?;
        let Some(maps) = maps else { return Ok(()) };
        let generation = changes.iter().rev().find_map(|c| match c {
            Change::Generation(g) => Some(*g),
            _ => None,
        });
        batch::maps_changing();
        maps.set_generation(GENERATION_DIRTY)?;
        // Releases before new pairs: a fixed IP moved between floating IPs in one revision
        // is free again before its new pair is written.
        let mut announce_later = Vec::new();
        for c in changes {
            if let Change::Ip { address, now, .. } = c
                && now.as_ref().and_then(|r| r.fixed_ip).is_none()
                && let Some(fixed) = maps.fixed_of(*address)?
            {
                maps.nat_purge(*address, fixed)?;
            }
        }
        for c in changes {
            match c {
                Change::Pool { now, before, .. } => {
                    apply_pool(maps, now.as_ref(), before.as_ref())?
                }
                Change::Ip {
                    address,
                    now: Some(row),
                    ..
                } => {
                    if let Some(fixed) = row.fixed_ip
                        && apply_pair(maps, *address, fixed)?
                        && owns(&row.pool)
                    {
                        announce_later.push((*address, row.pool.clone()));
                    }
                }
                _ => {}
            }
        }
        maps.rebuild_spoof_filter()?;
        if let Some(g) = generation {
            batch::record_generation(maps, g)?;
        }
        // Only the owner moves the neighbours' caches: a gateway that does not answer ARP for
        // the pool must not draw its traffic.
        for (floating, pool) in announce_later {
            let nic = store
                .read(|tx| tx.pool_get(&pool))?
                .and_then(|p| p.external_iface);
            announce(maps, announcer.as_deref(), floating, nic.as_deref());
        }
        Ok(())
    }

    /// Makes this gateway answer for exactly `owned`: every pool's trie entries get its NIC
    /// or none, tenant gateway addresses are added or removed, and every pool gained is
    /// announced on both sides (gratuitous ARP for its floating IPs and its tenant address).
    /// What is given up goes first, so that two gateways never both answer because of this
    /// one. Idempotent: it sets the whole state each time, so a call that failed half way is
    /// completed by the next.
    pub fn group_own(
        &mut self,
        owned: &BTreeSet<String>,
        pools: &[PoolRow],
        tenant: &[TenantGateway],
    ) -> Result<()> {
        let before = OWNED
            .read()
            .map(|o| o.clone())
            .unwrap_or_default()
            .unwrap_or_default();
        let gained: BTreeSet<String> = owned.difference(&before).cloned().collect();
        let announcer = self.announcer.clone();
        let (_, mut maps) = self.parts()?;
        // Off first (what is kept and nothing else), on after.
        for stage in [before.intersection(owned).cloned().collect(), owned.clone()] {
            set_owned(stage);
            if let Some(maps) = maps.as_deref_mut() {
                for pool in pools {
                    trie_add(maps, &stored_ranges(pool)?.trie_entries(), answer_nic(pool))?;
                }
            }
            for t in tenant {
                let Ok(idx) = iface::index(&t.iface) else {
                    continue;
                };
                if owns(&t.pool) {
                    iface::address_add(idx, t.address, t.len)?;
                } else {
                    iface::address_del(idx, t.address, t.len)?;
                }
            }
        }
        for t in tenant.iter().filter(|t| gained.contains(&t.pool)) {
            let idx = iface::index(&t.iface)
                .with_context(|| format!("tenant gateway {}/{}", t.address, t.len))?;
            let mac = iface::mac(&t.iface)?;
            match &announcer {
                Some(a) => a.announce(garp::Target {
                    ifindex: idx,
                    mac,
                    ip: t.address,
                }),
                None => garp::announce(idx, &mac, t.address)?,
            }
        }
        if let Some(maps) = maps {
            let gained: Vec<(&PoolRow, PoolRanges)> = pools
                .iter()
                .filter(|p| gained.contains(&p.name))
                .map(|p| Ok((p, stored_ranges(p)?)))
                .collect::<Result<_>>()?;
            if !gained.is_empty() {
                // From the maps, which hold every association: no read of the whole state.
                for pair in maps.nat_list()? {
                    if let Some((pool, _)) = gained.iter().find(|(_, r)| r.contains(pair.floating))
                    {
                        announce(
                            maps,
                            announcer.as_deref(),
                            pair.floating,
                            pool.external_iface.as_deref(),
                        );
                    }
                }
            }
            // The gateway's own addresses changed with the tenant addresses.
            maps.refresh_gateway_addresses()?;
        }
        Ok(())
    }
}

/// The data plane's fence, renewed off the control thread (a long job there must not let
/// the deadline pass): a map handle of its own.
pub struct Fence {
    bpffs: std::path::PathBuf,
    maps: Option<Dataplane>,
}

impl Fence {
    pub fn new(bpffs: &std::path::Path) -> Self {
        Self {
            bpffs: bpffs.to_owned(),
            maps: None,
        }
    }

    /// Fenced pools are answered for `left` more (what the lease is known to live yet, less a margin).
    pub fn renew(&mut self, left: std::time::Duration) -> Result<()> {
        if self.maps.is_none() {
            if !Dataplane::is_attached(&self.bpffs) {
                return Ok(());
            }
            self.maps = Some(Dataplane::open(&self.bpffs)?);
        }
        let result = self
            .maps
            .as_mut()
            .expect("opened above")
            .set_answer_until(left);
        if result.is_err() {
            // Detached and attached again: new maps next time.
            self.maps = None;
        }
        result
    }
}

/// Puts this process in a gateway group owning `owned` (see [`owns`]).
pub fn set_owned(owned: BTreeSet<String>) {
    if let Ok(mut o) = OWNED.write() {
        *o = Some(owned);
    }
}

/// Makes the maps hold `floating -> fixed`; whether they had to change.
fn apply_pair(maps: &mut Dataplane, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<bool> {
    if maps.fixed_of(floating)? == Some(fixed) && maps.floating_of(fixed)? == Some(floating) {
        return Ok(false);
    }
    if let Some(old) = maps.fixed_of(floating)? {
        maps.nat_purge(floating, old)?;
    }
    if let Some(other) = maps.floating_of(fixed)? {
        maps.nat_purge(other, fixed)?;
    }
    maps.nat_purge(floating, fixed)?;
    maps.nat_add(floating, fixed)?;
    Ok(true)
}

fn apply_pool(maps: &mut Dataplane, now: Option<&PoolRow>, before: Option<&PoolRow>) -> Result<()> {
    if let Some(old) = before
        && now.is_none_or(|n| n.ranges != old.ranges || n.excludes != old.excludes)
    {
        trie_del(maps, &stored_ranges(old)?.trie_entries(), answer_nic(old))?;
    }
    if let Some(pool) = now {
        trie_add(maps, &stored_ranges(pool)?.trie_entries(), answer_nic(pool))?;
    }
    Ok(())
}

/// The NIC a pool's trie entries carry on this gateway: its own ([`super::sync::pool_nic`])
/// where this gateway answers for it, none where another does.
pub(super) fn answer_nic(pool: &PoolRow) -> u32 {
    answer_nic_for(&pool.name, pool.external_iface.as_deref())
}

/// [`answer_nic`] of pool `name` bound to NIC `external`.
pub(super) fn answer_nic_for(name: &str, external: Option<&str>) -> u32 {
    if owns(name) {
        super::sync::pool_nic(external)
    } else {
        floatip_common::POOL_NO_NIC
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn every_gateway_computes_the_same_owner_and_pools_spread() {
        let all = ["gw1", "gw2", "gw3"];
        let pools: Vec<String> = (0..60).map(|i| format!("pool{i}")).collect();
        let mut count = HashMap::new();
        for p in &pools {
            let a = preferred_owner(p, all).unwrap();
            // Order of the live list does not matter.
            assert_eq!(preferred_owner(p, all.iter().rev().copied()), Some(a));
            *count.entry(a).or_insert(0) += 1;
        }
        assert_eq!(count.len(), 3, "{count:?}");
        assert!(count.values().all(|n| *n >= 10), "{count:?}");
        // A gateway leaving moves only its own pools.
        for p in &pools {
            let before = preferred_owner(p, all).unwrap();
            let after = preferred_owner(p, ["gw1", "gw3"]).unwrap();
            if before != "gw2" {
                assert_eq!(before, after, "{p}");
            }
        }
        assert_eq!(preferred_owner("p", std::iter::empty()), None);
    }

    #[test]
    fn tenant_gateways_parse_or_say_what_is_wrong() {
        let t: TenantGateway = "public=10.0.0.1/24@eth1".parse().unwrap();
        assert_eq!(
            t,
            TenantGateway {
                pool: "public".into(),
                address: Ipv4Addr::new(10, 0, 0, 1),
                len: 24,
                iface: "eth1".into(),
            }
        );
        for bad in [
            "public=10.0.0.1/24",
            "10.0.0.1/24@eth1",
            "public=10.0.0.1@eth1",
            "public=10.0.0.300/24@eth1",
            "public=10.0.0.1/33@eth1",
            "=10.0.0.1/24@eth1",
            "public=10.0.0.1/24@",
        ] {
            let e = bad.parse::<TenantGateway>().unwrap_err();
            assert!(e.contains("POOL=ADDRESS/LEN@IFACE"), "{bad}: {e}");
        }
    }
}
