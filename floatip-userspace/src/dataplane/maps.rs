//! The handle on the pinned maps: association pairs written so that traffic
//! never sees half of one, the per-association counter slots and the
//! anti-spoofing counting filter kept with them, pool prefixes and `META`.

use std::{
    io::ErrorKind,
    mem::size_of,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, anyhow, bail};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use floatip_common::{
    AssocStats, IfaceInfo, IfaceSlot, MAP_LAYOUT_VERSION, Meta, NatEntry, NextHop, POOL_EXCLUDED,
    POOL_MEMBER, PoolValue, SPOOF_FILTER_BUCKETS, maps as names, spoof_filter_bucket,
    spoof_filter_buckets,
};

use super::{
    Counters, Pair, Role, from_key,
    pins::{layout_mismatch, open_data, open_map, pinned_counters},
    possible_cpus, to_key,
};
use crate::iface;

pub(super) const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

/// Serialises this process's read-modify-writes of `META` (the control thread's generation and
/// the group's fence deadline are written from different threads).
static META_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Handle on the pinned maps of an attached data plane.
pub struct Dataplane {
    pub(super) bpffs: PathBuf,
    pub(super) fip_to_fixed: HashMap<MapData, u32, NatEntry>,
    pub(super) fixed_to_fip: HashMap<MapData, u32, NatEntry>,
    pub(super) pools: LpmTrie<MapData, u32, PoolValue>,
    pub(super) stats: Stats,
    pub(super) spoof_filter: Array<MapData, u32>,
    pub(super) slot_owners: Array<MapData, u32>,
    pub(super) outcomes: PerCpuArray<MapData, u64>,
    pub(super) ifaces: HashMap<MapData, u32, IfaceInfo>,
    iface_slots: Array<MapData, IfaceSlot>,
    pub(super) meta: Array<MapData, Meta>,
    pub(super) max_associations: u32,
}

/// The per-association counters, where the loader put them.
pub(super) enum Stats {
    /// The flat per-CPU array: CPU c's copy of slot s at `c * slots + s`. Written through
    /// the map (a claim zeroes a slot); read through a read-only mapping of its values
    /// (the map is mmapable), so summing a slot over 128 CPUs costs no system call.
    PerCpu {
        map: Array<MapData, AssocStats>,
        values: memmap2::Mmap,
        slots: u32,
        cpus: u32,
    },
    Shared(Array<MapData, AssocStats>),
}

impl Stats {
    /// Opens the counters in use, as the pinned maps record them
    /// ([`pinned_counters`]).
    fn open(bpffs: &Path) -> Result<Self> {
        Ok(match pinned_counters(bpffs)? {
            Some(Counters::Shared) => Stats::Shared(Array::try_from(open_map(
                bpffs,
                names::ASSOC_STATS_SHARED,
            )?)?),
            _ => {
                let data = open_data(bpffs, names::ASSOC_STATS)?;
                let entries = data.info()?.max_entries();
                let len = entries as usize * size_of::<AssocStats>();
                // SAFETY: the kernel keeps the values' pages alive while mapped; they are
                // only read, as plain u64 loads (a counter read while a program adds to it
                // is the old or the new value, never torn, on 64-bit machines).
                let values = unsafe {
                    memmap2::MmapOptions::new()
                        .len(len)
                        .map(data.fd().as_fd().as_raw_fd())
                }
                .map_err(|e| anyhow!("cannot map {}: {e}", names::ASSOC_STATS))?;
                let map: Array<MapData, AssocStats> = Array::try_from(Map::from_map_data(data)?)?;
                let cpus = possible_cpus()? as u32;
                // The loader sized it to every slot on every CPU.
                let slots = entries / cpus.max(1);
                Stats::PerCpu {
                    map,
                    values,
                    slots,
                    cpus,
                }
            }
        })
    }

    fn kind(&self) -> Counters {
        match self {
            Stats::PerCpu { .. } => Counters::PerCpu,
            Stats::Shared(_) => Counters::Shared,
        }
    }

    /// Zeroes the counters at `slot`.
    fn clear(&mut self, slot: u32) -> Result<()> {
        match self {
            Stats::PerCpu {
                map, slots, cpus, ..
            } => {
                for cpu in 0..*cpus {
                    map.set(cpu * *slots + slot, AssocStats::default(), 0)?;
                }
            }
            Stats::Shared(m) => m.set(slot, AssocStats::default(), 0)?,
        }
        Ok(())
    }

    /// The counters at `slot`, summed over CPUs (`None`: no such slot).
    pub(super) fn get(&self, slot: u32) -> Option<AssocStats> {
        match self {
            Stats::PerCpu {
                values,
                slots,
                cpus,
                ..
            } => {
                if slot >= *slots {
                    return None;
                }
                let mut sum = AssocStats::default();
                for cpu in 0..*cpus {
                    let at = (cpu * *slots + slot) as usize * size_of::<AssocStats>();
                    let v = values.get(at..at + size_of::<AssocStats>())?;
                    // SAFETY: in bounds (checked above); AssocStats is plain u64s.
                    let v: AssocStats =
                        unsafe { core::ptr::read_volatile(v.as_ptr().cast::<AssocStats>()) };
                    sum.in_packets += v.in_packets;
                    sum.in_bytes += v.in_bytes;
                    sum.out_packets += v.out_packets;
                    sum.out_bytes += v.out_bytes;
                }
                Some(sum)
            }
            Stats::Shared(m) => m.get(&slot, 0).ok(),
        }
    }
}

impl Dataplane {
    /// Where the per-association counters live.
    pub fn counters(&self) -> Counters {
        self.stats.kind()
    }

    /// The internal NIC through which the kernel routes to `fixed`, if any.
    pub fn internal_route(&self, fixed: Ipv4Addr) -> Result<Option<String>> {
        let Some(oif) = iface::route_oif(fixed)? else {
            return Ok(None);
        };
        let internal = self.nics(Role::Internal)?;
        Ok(internal
            .iter()
            .find(|(idx, _)| *idx == oif)
            .map(|(idx, _)| iface::name(*idx).unwrap_or_else(|| format!("#{idx}"))))
    }

    /// Opens the pinned maps; fails with a one-line error naming `floatip
    /// attach` when the data plane is not attached, and refuses maps of
    /// another layout version (checked before any other map is read).
    pub fn open(bpffs: &Path) -> Result<Self> {
        let meta: Array<MapData, Meta> = Array::try_from(open_map(bpffs, names::META)?)?;
        let pinned = meta.get(&0, 0)?.layout_version;
        if pinned != MAP_LAYOUT_VERSION {
            return Err(layout_mismatch(bpffs, pinned));
        }
        Self::open_with_meta(bpffs, meta)
    }

    /// [`Self::open`] without the layout check, for `detach`, which must be
    /// able to remove maps of another layout version.
    pub(super) fn open_any_layout(bpffs: &Path) -> Result<Self> {
        Self::open_with_meta(bpffs, Array::try_from(open_map(bpffs, names::META)?)?)
    }

    fn open_with_meta(bpffs: &Path, meta: Array<MapData, Meta>) -> Result<Self> {
        let f2x = open_data(bpffs, names::FIP_TO_FIXED)?;
        let max_associations = f2x.info()?.max_entries();
        Ok(Self {
            bpffs: bpffs.to_path_buf(),
            max_associations,
            fip_to_fixed: HashMap::try_from(Map::from_map_data(f2x)?)?,
            fixed_to_fip: HashMap::try_from(open_map(bpffs, names::FIXED_TO_FIP)?)?,
            pools: LpmTrie::try_from(open_map(bpffs, names::POOLS)?)?,
            stats: Stats::open(bpffs)?,
            slot_owners: Array::try_from(open_map(bpffs, names::SLOT_OWNERS)?)?,
            spoof_filter: Array::try_from(open_map(bpffs, names::SPOOF_FILTER)?)?,
            outcomes: PerCpuArray::try_from(open_map(bpffs, names::OUTCOMES)?)?,
            ifaces: HashMap::try_from(open_map(bpffs, names::IFACES)?)?,
            iface_slots: Array::try_from(open_map(bpffs, names::IFACE_SLOTS)?)?,
            meta,
        })
    }

    pub(super) fn lookup(
        map: &HashMap<MapData, u32, NatEntry>,
        ip: Ipv4Addr,
    ) -> Result<Option<NatEntry>> {
        match map.get(&to_key(ip), 0) {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The fixed IP `floating` maps to, if any.
    pub fn fixed_of(&self, floating: Ipv4Addr) -> Result<Option<Ipv4Addr>> {
        Ok(Self::lookup(&self.fip_to_fixed, floating)?.map(|e| from_key(e.addr)))
    }

    /// The floating IP of `fixed`, if any.
    pub fn floating_of(&self, fixed: Ipv4Addr) -> Result<Option<Ipv4Addr>> {
        Ok(Self::lookup(&self.fixed_to_fip, fixed)?.map(|e| from_key(e.addr)))
    }

    /// Hands out a counter slot for `floating`, zeroed: linear probing from
    /// a hash of the address for a free slot, or one `floating` already
    /// owns (left behind by a crash between claiming and mapping).
    /// Mutating commands run one at a time (the database's write lock), so
    /// two claims never race.
    fn claim_slot(&mut self, floating: Ipv4Addr) -> Result<u32> {
        let owner = to_key(floating);
        let n = self.slot_owners.len();
        let start = u32::from(floating).wrapping_mul(0x9e37_79b1) % n;
        for i in 0..n {
            let slot = (start + i) % n;
            let current = self.slot_owners.get(&slot, 0)?;
            if current == 0 || current == owner {
                self.stats.clear(slot)?;
                self.slot_owners.set(slot, owner, 0)?;
                return Ok(slot);
            }
        }
        bail!("no free counter slot for {floating} ({n} slots)")
    }

    /// Adds `delta` to the spoof-filter buckets of `addr/len` (a fixed or floating IP of a
    /// pair: /32; a pool prefix). Counted up before an entry enters its map and down after it
    /// left, so a crash can only leave a count too high (an extra exact lookup), never too low
    /// (a spoofed packet let through); a full repair recounts.
    fn filter_add(&mut self, addr: Ipv4Addr, len: u8, delta: i32) -> Result<()> {
        for bucket in spoof_filter_buckets(to_key(addr), len) {
            let n = self.spoof_filter.get(&bucket, 0)?;
            self.spoof_filter
                .set(bucket, n.saturating_add_signed(delta), 0)?;
        }
        Ok(())
    }

    /// [`Self::filter_add`] for both addresses of a pair.
    fn filter_add_pair(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr, delta: i32) -> Result<()> {
        self.filter_add(fixed, 32, delta)?;
        self.filter_add(floating, 32, delta)
    }

    /// What every spoof-filter bucket should count, from the association maps and the pool
    /// prefixes.
    fn filter_counts(&self) -> Result<Vec<u32>> {
        let mut want = vec![0u32; SPOOF_FILTER_BUCKETS as usize];
        for key in self.fixed_to_fip.keys().chain(self.fip_to_fixed.keys()) {
            want[spoof_filter_bucket(key?) as usize] += 1;
        }
        for item in self.pools.iter() {
            let (k, v) = item?;
            if v.kind == POOL_MEMBER {
                for b in spoof_filter_buckets(k.data(), k.prefix_len() as u8) {
                    want[b as usize] += 1;
                }
            }
        }
        for key in self.gateway_addrs()?.keys() {
            want[spoof_filter_bucket(key?) as usize] += 1;
        }
        Ok(want)
    }

    fn gateway_addrs(&self) -> Result<HashMap<MapData, u32, u32>> {
        Ok(HashMap::try_from(open_map(
            &self.bpffs,
            names::GATEWAY_ADDRS,
        )?)?)
    }

    /// [`Self::set_gateway_addresses`] with every IPv4 address this
    /// namespace has now.
    pub fn refresh_gateway_addresses(&mut self) -> Result<bool> {
        let addrs: Vec<Ipv4Addr> = iface::addresses()?.into_iter().map(|(_, a)| a).collect();
        self.set_gateway_addresses(&addrs)
    }

    /// The addresses `GATEWAY_ADDRS` holds.
    pub fn gateway_addresses(&self) -> Result<Vec<Ipv4Addr>> {
        let mut out: Vec<Ipv4Addr> = self
            .gateway_addrs()?
            .keys()
            .map(|k| k.map(from_key))
            .collect::<Result<_, _>>()?;
        out.sort();
        Ok(out)
    }

    /// Makes `GATEWAY_ADDRS` hold exactly `addrs` (this namespace's own
    /// addresses), with the spoof filter counting each: an address is
    /// counted before the programs can look it up, and uncounted after
    /// they no longer can. Returns whether anything changed.
    pub fn set_gateway_addresses(&mut self, addrs: &[Ipv4Addr]) -> Result<bool> {
        let addrs: Vec<Ipv4Addr> = addrs
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut map = self.gateway_addrs()?;
        let have: Vec<Ipv4Addr> = map
            .keys()
            .map(|k| k.map(from_key))
            .collect::<Result<_, _>>()?;
        let mut changed = false;
        for a in &addrs {
            if !have.contains(a) {
                self.filter_add(*a, 32, 1)?;
                if let Err(e) = map.insert(to_key(*a), 1, 0) {
                    let _ = self.filter_add(*a, 32, -1);
                    return Err(anyhow!(
                        "cannot record {a} as an address of the gateway: {e}"
                    ));
                }
                changed = true;
            }
        }
        for a in have.iter().filter(|a| !addrs.contains(a)) {
            map.remove(&to_key(*a))?;
            self.filter_add(*a, 32, -1)?;
            changed = true;
        }
        Ok(changed)
    }

    /// Recounts the spoof filter from the maps (after a repair).
    pub fn rebuild_spoof_filter(&mut self) -> Result<()> {
        for (bucket, want) in self.filter_counts()?.into_iter().enumerate() {
            let bucket = bucket as u32;
            if self.spoof_filter.get(&bucket, 0)? != want {
                self.spoof_filter.set(bucket, want, 0)?;
            }
        }
        Ok(())
    }

    /// Buckets whose count differs from the addresses and prefixes in the maps:
    /// (bucket, count, what it should count). Empty when the filter is exact.
    pub fn spoof_filter_mismatches(&self) -> Result<Vec<(u32, u32, u32)>> {
        let mut out = Vec::new();
        for (bucket, want) in self.filter_counts()?.into_iter().enumerate() {
            let bucket = bucket as u32;
            let have = self.spoof_filter.get(&bucket, 0)?;
            if have != want {
                out.push((bucket, have, want));
            }
        }
        Ok(out)
    }

    /// Frees `slot` if `floating` owns it.
    fn release_slot(&mut self, slot: u32, floating: Ipv4Addr) -> Result<()> {
        if slot < self.slot_owners.len() && self.slot_owners.get(&slot, 0)? == to_key(floating) {
            self.slot_owners.set(slot, 0, 0)?;
        }
        Ok(())
    }

    fn check_free(&self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
        if let Some(other) = self.fixed_of(floating)? {
            bail!("floating IP {floating} is already mapped to {other}");
        }
        if let Some(other) = self.floating_of(fixed)? {
            bail!("fixed IP {fixed} already has floating IP {other}");
        }
        Ok(())
    }

    /// Adds a pair so that traffic never sees half of it: the reverse entry
    /// first (BPF_NOEXIST), then the forward one, the reverse rolled back if
    /// that fails.
    pub fn nat_add(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
        let _lock = self.lock_pairs()?;
        self.check_free(floating, fixed)?;
        let slot = self.claim_slot(floating)?;
        self.filter_add_pair(floating, fixed, 1)?;
        let (f, x) = (to_key(floating), to_key(fixed));
        if let Err(e) = self.fixed_to_fip.insert(
            x,
            NatEntry {
                addr: f,
                slot,
                hop: NextHop::default(),
            },
            BPF_NOEXIST,
        ) {
            let _ = self.filter_add_pair(floating, fixed, -1);
            let _ = self.release_slot(slot, floating);
            return Err(anyhow!("cannot map fixed IP {fixed}: {e}"));
        }
        crate::failpoint::hit("pair-half-written");
        if let Err(e) = self.fip_to_fixed.insert(
            f,
            NatEntry {
                addr: x,
                slot,
                hop: NextHop::default(),
            },
            BPF_NOEXIST,
        ) {
            let _ = self.fixed_to_fip.remove(&x);
            let _ = self.filter_add_pair(floating, fixed, -1);
            let _ = self.release_slot(slot, floating);
            return Err(anyhow!("cannot map floating IP {floating}: {e}"));
        }
        Ok(())
    }

    /// Moves `floating` to `new_fixed`: the floating->fixed entry is
    /// overwritten in place, so traffic switches from the next packet.
    /// The association keeps its counters (and slot).
    pub fn nat_move(&mut self, floating: Ipv4Addr, new_fixed: Ipv4Addr) -> Result<()> {
        let _lock = self.lock_pairs()?;
        let entry = Self::lookup(&self.fip_to_fixed, floating)?
            .ok_or_else(|| anyhow!("floating IP {floating} is not mapped"))?;
        let old_fixed = from_key(entry.addr);
        if old_fixed == new_fixed {
            return Ok(());
        }
        if let Some(other) = self.floating_of(new_fixed)? {
            bail!("fixed IP {new_fixed} already has floating IP {other}");
        }
        let (f, x, old, slot) = (
            to_key(floating),
            to_key(new_fixed),
            to_key(old_fixed),
            entry.slot,
        );
        self.filter_add(new_fixed, 32, 1)?;
        if let Err(e) = self.fixed_to_fip.insert(
            x,
            NatEntry {
                addr: f,
                slot,
                hop: NextHop::default(),
            },
            BPF_NOEXIST,
        ) {
            let _ = self.filter_add(new_fixed, 32, -1);
            return Err(e.into());
        }
        if let Err(e) = self.fip_to_fixed.insert(
            f,
            NatEntry {
                addr: x,
                slot,
                hop: NextHop::default(),
            },
            BPF_EXIST,
        ) {
            let _ = self.fixed_to_fip.remove(&x);
            let _ = self.filter_add(new_fixed, 32, -1);
            return Err(e.into());
        }
        self.fixed_to_fip.remove(&old)?;
        self.filter_add(old_fixed, 32, -1)?;
        Ok(())
    }

    /// Removes the pair of `floating` (inbound first) and returns its fixed IP.
    pub fn nat_del(&mut self, floating: Ipv4Addr) -> Result<Ipv4Addr> {
        let _lock = self.lock_pairs()?;
        let entry = Self::lookup(&self.fip_to_fixed, floating)?
            .ok_or_else(|| anyhow!("floating IP {floating} is not mapped"))?;
        let fixed = from_key(entry.addr);
        self.fip_to_fixed.remove(&to_key(floating))?;
        crate::failpoint::hit("pair-half-written");
        self.fixed_to_fip.remove(&to_key(fixed))?;
        self.filter_add_pair(floating, fixed, -1)?;
        self.release_slot(entry.slot, floating)?;
        Ok(fixed)
    }

    /// Removes whatever entries mention `floating` or `fixed`, half pairs
    /// included; absence is not an error. For repair after a crash.
    pub fn nat_purge(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
        let _lock = self.lock_pairs()?;
        let mut slots = Vec::new();
        for (map, key) in [(&self.fip_to_fixed, floating), (&self.fixed_to_fip, fixed)] {
            if let Some(e) = Self::lookup(map, key)? {
                slots.push(e.slot);
            }
        }
        let mut removed = Vec::new();
        for (map, key) in [
            (&mut self.fip_to_fixed, floating),
            (&mut self.fixed_to_fip, fixed),
        ] {
            match map.remove(&to_key(key)) {
                Ok(()) => removed.push(key),
                Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        for addr in removed {
            self.filter_add(addr, 32, -1)?;
        }
        for slot in slots {
            self.release_slot(slot, floating)?;
        }
        Ok(())
    }

    /// Writes only the floating->fixed half of a pair, as a crash between the two writes of
    /// [`Self::nat_add`] would leave it: for the repair tests.
    #[cfg(test)]
    pub(crate) fn insert_half_pair(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
        let entry = NatEntry {
            addr: to_key(fixed),
            ..NatEntry::default()
        };
        self.fip_to_fixed.insert(to_key(floating), entry, 0)?;
        Ok(())
    }

    /// Every pair, read from floating->fixed.
    pub fn nat_list(&self) -> Result<Vec<Pair>> {
        let mut out = Vec::new();
        for item in self.fip_to_fixed.iter() {
            let (f, e) = item?;
            out.push(Pair {
                floating: from_key(f),
                fixed: from_key(e.addr),
            });
        }
        out.sort();
        Ok(out)
    }

    /// Every fixed->floating entry, for finding half pairs.
    pub fn nat_list_reverse(&self) -> Result<Vec<Pair>> {
        let mut out = Vec::new();
        for item in self.fixed_to_fip.iter() {
            let (x, e) = item?;
            out.push(Pair {
                floating: from_key(e.addr),
                fixed: from_key(x),
            });
        }
        out.sort();
        Ok(out)
    }

    /// Adds many pairs; each pair is written as in [`Self::nat_add`].
    /// On failure the pairs already added by this call are removed again.
    pub fn nat_add_bulk(&mut self, pairs: &[Pair]) -> Result<()> {
        for (i, p) in pairs.iter().enumerate() {
            if i == pairs.len() / 2 {
                crate::failpoint::hit("bulk-middle");
            }
            if let Err(e) = self.nat_add(p.floating, p.fixed) {
                for q in &pairs[..i] {
                    let _ = self.nat_purge(q.floating, q.fixed);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Marks `addr/len` as a pool prefix or, with `excluded`, as a hole in one. `nic`: the
    /// ifindex of the pool's external NIC, the only one answering ARP for it
    /// ([`floatip_common::POOL_ANY_NIC`]: every external NIC).
    pub fn pool_prefix_add(
        &mut self,
        addr: Ipv4Addr,
        len: u8,
        excluded: bool,
        nic: u32,
    ) -> Result<()> {
        self.pool_prefix_add_fenced(addr, len, excluded, nic, false)
    }

    /// [`Self::pool_prefix_add`]; `fenced`: answered only until [`Self::set_answer_until`]
    /// (a pool of a gateway group).
    pub fn pool_prefix_add_fenced(
        &mut self,
        addr: Ipv4Addr,
        len: u8,
        excluded: bool,
        nic: u32,
        fenced: bool,
    ) -> Result<()> {
        let value = PoolValue {
            kind: if excluded { POOL_EXCLUDED } else { POOL_MEMBER },
            ifindex: nic,
            prefix_len: len as u32,
            fenced: u32::from(fenced),
        };
        let key = Key::new(len as u32, to_key(addr));
        // Members count in the spoof filter: up before the trie has it, down if it had it.
        let was_member = self.pool_member(&key)?;
        if value.kind == POOL_MEMBER && !was_member {
            self.filter_add(addr, len, 1)?;
        }
        if let Err(e) = self.pools.insert(&key, value, 0) {
            if value.kind == POOL_MEMBER && !was_member {
                let _ = self.filter_add(addr, len, -1);
            }
            return Err(e.into());
        }
        if value.kind != POOL_MEMBER && was_member {
            self.filter_add(addr, len, -1)?;
        }
        Ok(())
    }

    pub fn pool_prefix_del(&mut self, addr: Ipv4Addr, len: u8) -> Result<()> {
        let key = Key::new(len as u32, to_key(addr));
        let was_member = self.pool_member(&key)?;
        match self.pools.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if was_member {
            self.filter_add(addr, len, -1)?;
        }
        Ok(())
    }

    /// Whether the trie holds exactly `key` as a pool member (its lookup is a longest match:
    /// the value's own prefix length tells which entry answered).
    fn pool_member(&self, key: &Key<u32>) -> Result<bool> {
        match self.pools.get(key, 0) {
            Ok(v) => Ok(v.prefix_len == key.prefix_len() && v.kind == POOL_MEMBER),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether another gateway of this one's group answers for `addr`: it lies in a pool
    /// whose fenced entry names no NIC here.
    pub fn answered_elsewhere(&self, addr: Ipv4Addr) -> Result<bool> {
        match self.pools.get(&Key::new(32, to_key(addr)), 0) {
            Ok(v) => Ok(v.kind == POOL_MEMBER
                && v.fenced != 0
                && v.ifindex == floatip_common::POOL_NO_NIC),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every pool prefix: (address, length, excluded, NIC ifindex).
    pub fn pool_prefixes(&self) -> Result<Vec<(Ipv4Addr, u8, bool, u32)>> {
        let mut out = Vec::new();
        for item in self.pools.iter() {
            let (k, v) = item?;
            out.push((
                from_key(k.data()),
                k.prefix_len() as u8,
                v.kind == POOL_EXCLUDED,
                v.ifindex,
            ));
        }
        Ok(out)
    }

    /// Control-plane generation the maps reflect.
    pub fn generation(&self) -> Result<u64> {
        Ok(self.meta.get(&0, 0)?.generation)
    }

    pub fn set_generation(&mut self, generation: u64) -> Result<()> {
        let _held = META_LOCK.lock();
        let mut m = self.meta.get(&0, 0)?;
        m.generation = generation;
        self.meta.set(0, m, 0)?;
        Ok(())
    }

    /// Fenced pool entries are answered until `deadline` from now (none if it has passed).
    pub fn set_answer_until(&mut self, deadline: Duration) -> Result<()> {
        let _held = META_LOCK.lock();
        let mut m = self.meta.get(&0, 0)?;
        m.answer_until = super::hops::coarse_now_ns() + deadline.as_nanos() as u64;
        self.meta.set(0, m, 0)?;
        Ok(())
    }

    /// Identity of the state database the maps were loaded from (0: not recorded yet).
    pub fn db_identity(&self) -> Result<u64> {
        Ok(self.meta.get(&0, 0)?.db_identity)
    }

    pub fn set_db_identity(&mut self, identity: u64) -> Result<()> {
        let _held = META_LOCK.lock();
        let mut m = self.meta.get(&0, 0)?;
        m.db_identity = identity;
        self.meta.set(0, m, 0)?;
        Ok(())
    }

    /// Whether the programs write their event log (see [`log::follow`]).
    pub fn set_log_enabled(&mut self, on: bool) -> Result<()> {
        let _held = META_LOCK.lock();
        let mut m = self.meta.get(&0, 0)?;
        m.log_enabled = u32::from(on);
        self.meta.set(0, m, 0)?;
        Ok(())
    }

    /// Size of the association maps.
    pub fn max_associations(&self) -> Result<u32> {
        Ok(self.max_associations)
    }

    /// Managed NICs of the given role: (ifindex, MAC).
    /// Forgets NIC `idx` (detached): its `IFACES` entry and the `IFACE_SLOTS` slot it holds.
    pub(super) fn forget_nic(&mut self, idx: u32) {
        let _ = self.ifaces.remove(&idx);
        let slot = IfaceSlot::index(idx);
        if self
            .iface_slots
            .get(&slot, 0)
            .is_ok_and(|s| s.ifindex == idx)
        {
            let _ = self.iface_slots.set(slot, IfaceSlot::default(), 0);
        }
    }

    pub fn nics(&self, role: Role) -> Result<Vec<(u32, [u8; 6])>> {
        let want = role.to_map();
        let mut out = Vec::new();
        for item in self.ifaces.iter() {
            let (idx, info) = item?;
            if info.role == want {
                out.push((idx, info.mac));
            }
        }
        out.sort();
        Ok(out)
    }
}
