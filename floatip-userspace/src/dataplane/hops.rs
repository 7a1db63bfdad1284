//! The next-hop cache in the maps: each `FIP_TO_FIXED` entry's [`NextHop`],
//! the default route's hop, the route filter and the epoch with its lease.
//! Only the follower (`crate::follower`) writes them; the pair writers
//! take the same lock, so the follower never writes a hop onto a pair that
//! moved since it read it.

use std::{fs::File, net::Ipv4Addr, os::fd::AsRawFd};

use anyhow::{Context, Result};
use aya::maps::{Array, MapData};
use floatip_common::{NatEntry, NextHop, ROUTE_FILTER_WORDS, Routing, maps as names};

use super::{Dataplane, from_key, pins::open_map, to_key};

const BPF_EXIST: u64 = 2;

/// The clock of [`Routing::lease_ns`]: what `bpf_ktime_get_coarse_ns`
/// reads in the programs (CLOCK_MONOTONIC_COARSE).
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An exclusive `flock` on the bpffs directory, held while pairs are written.
pub struct PairLock(#[allow(dead_code)] File);

/// The cache's global maps.
pub struct HopCache {
    routing: Array<MapData, Routing>,
    default: Array<MapData, NextHop>,
    filter: Array<MapData, u64>,
    words: Vec<u64>,
}

impl Dataplane {
    /// Serializes the writers of `FIP_TO_FIXED`: commands (which also hold
    /// the database's write lock) and the follower (which does not).
    pub fn lock_pairs(&self) -> Result<PairLock> {
        let dir = File::open(&self.bpffs)
            .with_context(|| format!("cannot open {}", self.bpffs.display()))?;
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot lock {}", self.bpffs.display()));
        }
        Ok(PairLock(dir))
    }

    /// Every pair with its cached hop.
    pub fn hops(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr, NextHop)>> {
        let mut out = Vec::new();
        for item in self.fip_to_fixed.iter() {
            let (f, e) = item?;
            out.push((from_key(f), from_key(e.addr), e.hop));
        }
        Ok(out)
    }

    /// Writes `hop` into the entry of `floating` if it still maps to `fixed`
    /// (false: it moved or went; the follower looks again at the next
    /// generation).
    pub fn set_hop(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr, hop: NextHop) -> Result<bool> {
        let _lock = self.lock_pairs()?;
        let Some(entry) = Self::lookup(&self.fip_to_fixed, floating)? else {
            return Ok(false);
        };
        if entry.addr != to_key(fixed) {
            return Ok(false);
        }
        if entry.hop == hop {
            return Ok(true);
        }
        let entry = NatEntry { hop, ..entry };
        self.fip_to_fixed
            .insert(to_key(floating), entry, BPF_EXIST)?;
        Ok(true)
    }

    /// What `status` shows of the cache.
    pub fn next_hop_status(&self) -> Result<super::status::NextHopStatus> {
        let cache = self.hop_cache()?;
        let r = cache.routing()?;
        let live = r.epoch != 0 && coarse_now_ns() < r.lease_ns;
        let current = |h: &NextHop| live && h.epoch == r.epoch;
        let cached = self.hops()?.iter().filter(|(_, _, h)| current(h)).count();
        let default = cache.default.get(&(r.default_index & 1), 0)?;
        Ok(super::status::NextHopStatus {
            following: live,
            epoch: r.epoch,
            cached,
            default_route: current(&default),
        })
    }

    /// Opens the cache's global maps.
    pub fn hop_cache(&self) -> Result<HopCache> {
        let filter: Array<MapData, u64> =
            Array::try_from(open_map(&self.bpffs, names::ROUTE_FILTER)?)?;
        let mut words = Vec::with_capacity(ROUTE_FILTER_WORDS as usize);
        for i in 0..ROUTE_FILTER_WORDS {
            words.push(filter.get(&i, 0)?);
        }
        Ok(HopCache {
            routing: Array::try_from(open_map(&self.bpffs, names::ROUTING)?)?,
            default: Array::try_from(open_map(&self.bpffs, names::DEFAULT_HOP)?)?,
            filter,
            words,
        })
    }
}

impl HopCache {
    pub fn routing(&self) -> Result<Routing> {
        Ok(self.routing.get(&0, 0)?)
    }

    pub fn set_routing(&mut self, routing: Routing) -> Result<()> {
        Ok(self.routing.set(0, routing, 0)?)
    }

    /// Writes the default route's hop into the entry programs do not read
    /// and makes it current. The caller leaves time between two calls (the
    /// programs copy an entry within nanoseconds of choosing it).
    pub fn set_default(&mut self, hop: NextHop) -> Result<()> {
        let mut r = self.routing()?;
        let next = (r.default_index & 1) ^ 1;
        self.default.set(next, hop, 0)?;
        r.default_index = next;
        self.set_routing(r)
    }

    /// Writes the words of the route filter that differ.
    pub fn set_filter(&mut self, words: &[u64]) -> Result<()> {
        for (i, (&new, old)) in words.iter().zip(self.words.iter_mut()).enumerate() {
            if new != *old {
                self.filter.set(i as u32, new, 0)?;
                *old = new;
            }
        }
        Ok(())
    }
}
