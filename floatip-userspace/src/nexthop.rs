//! What the FIB would answer, computed from a snapshot of the kernel's
//! links, routes, rules and neighbours: the next hops the follower caches in
//! the maps (`crate::follower`). Pure: no I/O, so every rule is unit-tested.
//!
//! The cache only ever holds an answer the snapshot makes certain. Anything
//! the follower does not model makes it cache nothing at all (the programs
//! then ask the FIB for every packet, as without a follower): policy rules
//! other than the kernel's three defaults, routes with a TOS, routes in the
//! `default` table, forwarding disabled on a managed NIC. Per destination,
//! it caches nothing when the route is not a single-path unicast route out of
//! a managed NIC that is up, when two routes tie, or when the neighbour is
//! not REACHABLE (or PERMANENT / NOARP).

use std::{collections::HashMap, net::Ipv4Addr};

use floatip_common::{NextHop, ROUTE_FILTER_WORDS};

pub const RT_TABLE_DEFAULT: u32 = 253;
pub const RT_TABLE_MAIN: u32 = 254;
pub const RT_TABLE_LOCAL: u32 = 255;

/// A link as the snapshot holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub mtu: u32,
    pub mac: [u8; 6],
    /// Administratively up with carrier.
    pub up: bool,
}

/// What kind of route (the `RTN_*` types that matter here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Unicast,
    /// Local, broadcast, anycast: the gateway's own addresses.
    Local,
    /// Blackhole, unreachable, prohibit, throw, multicast, anything else.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub table: u32,
    pub dst: Ipv4Addr,
    pub len: u8,
    pub kind: Kind,
    pub tos: u8,
    pub priority: u32,
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    /// The route's `mtu` metric, if set.
    pub mtu: Option<u32>,
    /// Several next hops (ECMP): not cached.
    pub multipath: bool,
    /// The next hop is dead or its link down.
    pub dead: bool,
}

impl Route {
    fn covers(&self, ip: Ipv4Addr) -> bool {
        prefix_mask(self.len) & (u32::from(ip) ^ u32::from(self.dst)) == 0
    }
}

/// A neighbour entry's state, reduced to what the cache needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeighState {
    /// REACHABLE, PERMANENT or NOARP: its MAC can be cached.
    Valid,
    /// STALE: the kernel still uses it but has not confirmed it; the
    /// follower asks the kernel to probe it.
    Stale,
    /// Being probed, or failed, or incomplete.
    Unconfirmed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub state: NeighState,
    pub mac: Option<[u8; 6]>,
}

/// A managed NIC: its role decides whether the default route may leave by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Managed {
    pub external: bool,
}

/// The kernel's forwarding state, as far as the cache needs it.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    pub links: HashMap<u32, Link>,
    pub routes: Vec<Route>,
    /// Only the kernel's three default rules (local, main, default).
    pub default_rules_only: bool,
    /// Forwarding is enabled on every managed NIC.
    pub forwarding: bool,
    pub neighbours: HashMap<(u32, Ipv4Addr), Neighbour>,
    pub managed: HashMap<u32, Managed>,
}

/// Why a destination gets no cached answer (for `floatip follow -v` and the tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uncached {
    /// The snapshot holds something the follower does not model.
    NotSimple,
    /// Local to the gateway, or no unicast route.
    NoRoute,
    /// The route is not one unicast path out of a managed NIC that is up.
    Unsupported,
    /// Two routes tie (same prefix length and metric).
    Ambiguous,
    /// The neighbour is not confirmed (its address, for probing).
    Neighbour(u32, Ipv4Addr, NeighState),
}

pub fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

impl Topology {
    /// Whether the FIB's answers depend on nothing but the destination and
    /// tables the follower models.
    pub fn simple(&self) -> bool {
        self.default_rules_only
            && self.forwarding
            && self
                .routes
                .iter()
                .all(|r| r.tos == 0 && r.table != RT_TABLE_DEFAULT)
    }

    /// The route the FIB would use for `dst`: none if the local table
    /// holds it (the gateway's own, or broadcast), else the main table's
    /// longest match with the lowest metric.
    fn route(&self, dst: Ipv4Addr) -> Result<&Route, Uncached> {
        if self
            .routes
            .iter()
            .any(|r| r.table == RT_TABLE_LOCAL && r.covers(dst))
        {
            return Err(Uncached::NoRoute);
        }
        // Longest prefix first, then the lowest metric; a tie is not cached.
        let rank = |r: &Route| (r.len, std::cmp::Reverse(r.priority));
        let mut best: Option<&Route> = None;
        let mut tie = false;
        for r in self
            .routes
            .iter()
            .filter(|r| r.table == RT_TABLE_MAIN && r.covers(dst))
        {
            match best.map(|b| rank(r).cmp(&rank(b))) {
                Some(std::cmp::Ordering::Equal) => tie = true,
                Some(std::cmp::Ordering::Less) => {}
                _ => (best, tie) = (Some(r), false),
            }
        }
        match best {
            None => Err(Uncached::NoRoute),
            Some(_) if tie => Err(Uncached::Ambiguous),
            Some(r) => Ok(r),
        }
    }

    /// The hop of `route` for `dst`, tagged with `epoch`.
    fn hop_of(&self, route: &Route, dst: Ipv4Addr, epoch: u32) -> Result<NextHop, Uncached> {
        if route.kind != Kind::Unicast || route.multipath || route.dead {
            return Err(match route.kind {
                Kind::Unicast => Uncached::Unsupported,
                _ => Uncached::NoRoute,
            });
        }
        let oif = route.oif.ok_or(Uncached::Unsupported)?;
        if !self.managed.contains_key(&oif) {
            return Err(Uncached::Unsupported);
        }
        let link = self
            .links
            .get(&oif)
            .filter(|l| l.up)
            .ok_or(Uncached::Unsupported)?;
        let via = route.gateway.unwrap_or(dst);
        let neigh = self.neighbours.get(&(oif, via));
        let mac = match neigh {
            Some(Neighbour {
                state: NeighState::Valid,
                mac: Some(mac),
            }) => *mac,
            Some(n) => return Err(Uncached::Neighbour(oif, via, n.state)),
            None => return Err(Uncached::Neighbour(oif, via, NeighState::Unconfirmed)),
        };
        let mtu = route
            .mtu
            .filter(|&m| m != 0)
            .unwrap_or(link.mtu)
            .min(link.mtu);
        Ok(NextHop {
            ifindex: oif,
            epoch,
            mtu: mtu.min(u32::from(u16::MAX)) as u16,
            _pad: 0,
            smac: link.mac,
            dmac: mac,
        })
    }

    /// The neighbour packets to `dst` go to (egress and address), if it has
    /// a unicast route: what a neighbour change must be matched against.
    pub fn via(&self, dst: Ipv4Addr) -> Option<(u32, Ipv4Addr)> {
        let r = self.route(dst).ok()?;
        Some((r.oif?, r.gateway.unwrap_or(dst)))
    }

    /// The cached answer for packets to `dst` (a fixed IP), valid in `epoch`.
    pub fn hop(&self, dst: Ipv4Addr, epoch: u32) -> Result<NextHop, Uncached> {
        if !self.simple() {
            return Err(Uncached::NotSimple);
        }
        let route = self.route(dst)?;
        self.hop_of(route, dst, epoch)
    }

    /// The default route's answer, for packets an instance sends out: only
    /// a route by a gateway out of a managed external NIC.
    pub fn default_hop(&self, epoch: u32) -> Result<NextHop, Uncached> {
        if !self.simple() {
            return Err(Uncached::NotSimple);
        }
        let route = self.route(Ipv4Addr::UNSPECIFIED)?;
        if route.len != 0 || route.gateway.is_none() {
            return Err(Uncached::Unsupported);
        }
        if !route
            .oif
            .and_then(|o| self.managed.get(&o))
            .is_some_and(|m| m.external)
        {
            return Err(Uncached::Unsupported);
        }
        self.hop_of(route, Ipv4Addr::UNSPECIFIED, epoch)
    }

    /// One bit per /16 that any route other than the main table's default
    /// overlaps: the default hop is used only outside them.
    pub fn route_filter(&self) -> Vec<u64> {
        let mut words = vec![0u64; ROUTE_FILTER_WORDS as usize];
        for r in &self.routes {
            if r.table == RT_TABLE_MAIN && r.len == 0 {
                continue;
            }
            let first = u32::from(r.dst) & prefix_mask(r.len);
            let start = first >> 16;
            let count = if r.len >= 16 { 1 } else { 1u32 << (16 - r.len) };
            for n in start..start + count {
                words[(n >> 6) as usize] |= 1 << (n & 63);
            }
        }
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INT: u32 = 3;
    const EXT: u32 = 2;
    const OTHER: u32 = 9;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn route(table: u32, dst: &str, len: u8, oif: u32, gateway: Option<&str>) -> Route {
        Route {
            table,
            dst: ip(dst),
            len,
            kind: if table == RT_TABLE_LOCAL {
                Kind::Local
            } else {
                Kind::Unicast
            },
            tos: 0,
            priority: 0,
            oif: Some(oif),
            gateway: gateway.map(ip),
            mtu: None,
            multipath: false,
            dead: false,
        }
    }

    fn topo() -> Topology {
        let mut t = Topology {
            default_rules_only: true,
            forwarding: true,
            ..Topology::default()
        };
        for (i, ext) in [(INT, false), (EXT, true)] {
            t.links.insert(
                i,
                Link {
                    mtu: 1500,
                    mac: [2, 0, 0, 0, 0, i as u8],
                    up: true,
                },
            );
            t.managed.insert(i, Managed { external: ext });
        }
        t.routes = vec![
            route(RT_TABLE_MAIN, "10.0.0.0", 24, INT, None),
            route(RT_TABLE_MAIN, "203.0.113.0", 24, EXT, None),
            route(RT_TABLE_MAIN, "0.0.0.0", 0, EXT, Some("203.0.113.1")),
            route(RT_TABLE_LOCAL, "10.0.0.1", 32, INT, None),
        ];
        for (i, a, m) in [(INT, "10.0.0.11", 0x11), (EXT, "203.0.113.1", 0x01)] {
            t.neighbours.insert(
                (i, ip(a)),
                Neighbour {
                    state: NeighState::Valid,
                    mac: Some([0xaa, 0, 0, 0, 0, m]),
                },
            );
        }
        t
    }

    #[test]
    fn a_connected_instance_is_cached_with_its_mac() {
        let h = topo().hop(ip("10.0.0.11"), 7).unwrap();
        assert_eq!((h.ifindex, h.epoch, h.mtu), (INT, 7, 1500));
        assert_eq!(h.dmac, [0xaa, 0, 0, 0, 0, 0x11]);
        assert_eq!(h.smac, [2, 0, 0, 0, 0, INT as u8]);
    }

    #[test]
    fn the_default_route_is_cached_through_its_gateway() {
        let h = topo().default_hop(1).unwrap();
        assert_eq!((h.ifindex, h.dmac[5]), (EXT, 0x01));
    }

    #[test]
    fn unconfirmed_neighbours_are_not_cached() {
        let mut t = topo();
        t.neighbours.get_mut(&(INT, ip("10.0.0.11"))).unwrap().state = NeighState::Stale;
        assert_eq!(
            t.hop(ip("10.0.0.11"), 1),
            Err(Uncached::Neighbour(INT, ip("10.0.0.11"), NeighState::Stale))
        );
        assert!(matches!(
            t.hop(ip("10.0.0.12"), 1),
            Err(Uncached::Neighbour(..))
        ));
    }

    #[test]
    fn local_addresses_ties_and_unmanaged_egress_are_not_cached() {
        let mut t = topo();
        assert_eq!(t.hop(ip("10.0.0.1"), 1), Err(Uncached::NoRoute));
        t.routes
            .push(route(RT_TABLE_MAIN, "10.0.0.0", 24, INT, None));
        assert_eq!(t.hop(ip("10.0.0.11"), 1), Err(Uncached::Ambiguous));
        let mut t = topo();
        t.routes
            .push(route(RT_TABLE_MAIN, "10.0.0.11", 32, OTHER, None));
        assert_eq!(t.hop(ip("10.0.0.11"), 1), Err(Uncached::Unsupported));
    }

    #[test]
    fn the_longest_prefix_then_the_lowest_metric_wins() {
        let mut t = topo();
        let mut via = route(RT_TABLE_MAIN, "10.0.0.0", 24, INT, Some("10.0.0.11"));
        via.priority = 10;
        t.routes.push(via.clone());
        // Same length, higher metric: the connected route still wins.
        assert_eq!(
            t.hop(ip("10.0.0.12"), 1).err(),
            Some(Uncached::Neighbour(
                INT,
                ip("10.0.0.12"),
                NeighState::Unconfirmed
            ))
        );
        via.len = 25;
        t.routes.push(via);
        assert_eq!(t.hop(ip("10.0.0.12"), 1).unwrap().dmac[5], 0x11);
    }

    #[test]
    fn anything_unmodelled_caches_nothing() {
        for change in [
            |t: &mut Topology| t.default_rules_only = false,
            |t: &mut Topology| t.forwarding = false,
            |t: &mut Topology| t.routes[0].tos = 4,
            |t: &mut Topology| {
                t.routes
                    .push(route(RT_TABLE_DEFAULT, "0.0.0.0", 0, EXT, None))
            },
        ] {
            let mut t = topo();
            change(&mut t);
            assert_eq!(t.hop(ip("10.0.0.11"), 1), Err(Uncached::NotSimple));
            assert_eq!(t.default_hop(1), Err(Uncached::NotSimple));
        }
    }

    #[test]
    fn route_mtu_down_links_and_multipath() {
        let mut t = topo();
        t.routes[0].mtu = Some(1400);
        assert_eq!(t.hop(ip("10.0.0.11"), 1).unwrap().mtu, 1400);
        t.routes[0].multipath = true;
        assert_eq!(t.hop(ip("10.0.0.11"), 1), Err(Uncached::Unsupported));
        let mut t = topo();
        t.links.get_mut(&INT).unwrap().up = false;
        assert_eq!(t.hop(ip("10.0.0.11"), 1), Err(Uncached::Unsupported));
    }

    #[test]
    fn the_filter_marks_every_slash16_but_the_default_routes() {
        let w = topo().route_filter();
        let bit = |a: &str| {
            let n = u32::from(ip(a)) >> 16;
            w[(n >> 6) as usize] >> (n & 63) & 1
        };
        assert_eq!(bit("10.0.200.1"), 1);
        assert_eq!(bit("203.0.113.9"), 1);
        assert_eq!(bit("198.51.100.2"), 0);
        assert_eq!(bit("10.1.0.0"), 0);
        let mut t = topo();
        t.routes.push(route(
            RT_TABLE_MAIN,
            "172.16.0.0",
            12,
            EXT,
            Some("203.0.113.1"),
        ));
        let w = t.route_filter();
        // 10.0/16 (connected and local), 203.0/16, and 172.16/12 as sixteen.
        assert_eq!(w.iter().map(|x| x.count_ones()).sum::<u32>(), 2 + 16);
    }
}
