//! What `floatip status` and `floatip nat stats` read from the maps and links.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use anyhow::{Result, anyhow};
use aya::maps::PerCpuHashMap;
use floatip_common::{maps as names, outcome};

use super::{
    Counters, Dataplane, Mode, Role, from_key,
    pins::{find_link, open_map, program_id},
};
use crate::iface;

/// An attached interface, as `floatip status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attached {
    pub ifindex: u32,
    pub name: String,
    pub role: Role,
    pub mode: Mode,
    pub program_id: u32,
    pub mac: String,
    /// The NIC's transmit drops and errors: frames XDP sends into a veth whose peer runs no
    /// NAPI are counted here, and nowhere else.
    pub tx_dropped: u64,
    pub tx_errors: u64,
    /// The driver's XDP transmit/redirect error and drop counters, summed (`ethtool -S`);
    /// `None` when it keeps none.
    pub xdp_errors: Option<u64>,
    /// Frames this NIC's program redirected that the kernel then refused to send and dropped,
    /// as floatip's own tracepoint program counts them; `None` where it does not run (tc).
    pub send_drops: Option<u64>,
}

/// Everything `floatip status` prints.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DataplaneStatus {
    pub bpffs: PathBuf,
    pub interfaces: Vec<Attached>,
    pub associations: usize,
    pub max_associations: u32,
    /// Where the per-association counters live (per CPU or shared).
    pub association_counters: Counters,
    pub layout_version: u32,
    pub generation: u64,
    /// Identity of the state database the maps were loaded from.
    pub db_identity: String,
    pub counters: BTreeMap<&'static str, u64>,
    pub next_hops: NextHopStatus,
}

/// The next-hop cache as the programs see it now.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NextHopStatus {
    /// A follower's lease is current: cached answers are used.
    pub following: bool,
    pub epoch: u32,
    /// Associations whose hop is cached in the current epoch.
    pub cached: usize,
    /// The default route's hop is cached.
    pub default_route: bool,
}

/// Per-association counters (per-CPU ones summed over CPUs).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PairStats {
    pub floating: Ipv4Addr,
    pub fixed: Ipv4Addr,
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
}

impl Dataplane {
    /// Per-outcome counters summed over CPUs, in `outcome::NAMES` order.
    pub fn outcomes(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut out = BTreeMap::new();
        for (i, name) in outcome::NAMES.iter().enumerate() {
            let v = self.outcomes.get(&(i as u32), 0)?;
            out.insert(*name, v.iter().sum());
        }
        Ok(out)
    }

    /// Counters of one association, or of all when `only` is `None`.
    pub fn pair_stats(&self, only: Option<Ipv4Addr>) -> Result<Vec<PairStats>> {
        let entries = match only {
            Some(f) => vec![(
                f,
                Self::lookup(&self.fip_to_fixed, f)?
                    .ok_or_else(|| anyhow!("floating IP {f} is not mapped"))?,
            )],
            None => {
                let mut all = Vec::new();
                for item in self.fip_to_fixed.iter() {
                    let (f, e) = item?;
                    all.push((from_key(f), e));
                }
                all.sort_by_key(|(f, _)| *f);
                all
            }
        };
        let mut out = Vec::new();
        for (floating, entry) in entries {
            let mut s = PairStats {
                floating,
                fixed: from_key(entry.addr),
                in_packets: 0,
                in_bytes: 0,
                out_packets: 0,
                out_bytes: 0,
            };
            if let Some(v) = self.stats.get(entry.slot) {
                s.in_packets = v.in_packets;
                s.in_bytes = v.in_bytes;
                s.out_packets = v.out_packets;
                s.out_bytes = v.out_bytes;
            }
            out.push(s);
        }
        Ok(out)
    }

    /// Everything `floatip status` shows.
    pub fn status(&self) -> Result<DataplaneStatus> {
        let drops: PerCpuHashMap<_, u32, u64> =
            PerCpuHashMap::try_from(open_map(&self.bpffs, names::SEND_DROPS)?)?;
        let mut interfaces = Vec::new();
        for item in self.ifaces.iter() {
            let (idx, info) = item?;
            let Some((path, mode)) = find_link(&self.bpffs, idx)? else {
                continue;
            };
            let program_id = program_id(&path);
            let link = iface::link_info(idx).ok().flatten().unwrap_or_default();
            interfaces.push(Attached {
                ifindex: idx,
                name: iface::name(idx).unwrap_or_else(|| format!("#{idx}")),
                role: Role::from_map(info.role),
                mode,
                program_id,
                mac: iface::fmt_mac(&info.mac),
                tx_dropped: link.tx_dropped,
                tx_errors: link.tx_errors,
                xdp_errors: iface::name(idx).and_then(|n| iface::xdp_errors(&n).ok().flatten()),
                send_drops: drops.get(&program_id, 0).ok().map(|v| v.iter().sum()),
            });
        }
        interfaces.sort_by_key(|a| a.ifindex);
        let meta = self.meta.get(&0, 0)?;
        Ok(DataplaneStatus {
            bpffs: self.bpffs.clone(),
            interfaces,
            associations: self.fip_to_fixed.keys().count(),
            max_associations: self.max_associations()?,
            association_counters: self.counters(),
            layout_version: meta.layout_version,
            generation: meta.generation,
            db_identity: format!("{:016x}", meta.db_identity),
            counters: self.outcomes()?,
            next_hops: self.next_hop_status()?,
        })
    }
}
