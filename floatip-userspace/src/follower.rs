//! The next-hop follower: keeps the answers cached in the maps (each pair's
//! hop toward its fixed IP, the default route's hop, the route filter) in
//! step with the kernel's own state, through rtnetlink notifications.
//!
//! - Routes, links, addresses, rules or forwarding change: the epoch is
//!   bumped first — one map write that makes every cached answer invalid at
//!   once, so the programs ask the FIB — then everything is resolved again
//!   from fresh dumps and written with the new epoch.
//! - A neighbour changes: only the hops through it are written again (or
//!   invalidated: a STALE entry is not cached, and the kernel is asked to
//!   probe it, as its own forwarding would).
//! - New, moved or removed pairs (the maps' generation moved): resolved.
//! - Several times a second the follower renews its lease in `ROUTING`; if
//!   it dies, the programs stop trusting the cache when the lease runs out.
//!   On a clean exit it withdraws the epoch at once.
//!
//! Only the hop resolution is modelled (`crate::nexthop`); what the model
//! does not cover makes the follower cache nothing.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use floatip_common::{NextHop, Routing};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteType},
    rule::{RuleAttribute, RuleMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::{
    dataplane::{Dataplane, HopCache, Role, coarse_now_ns},
    iface,
    nexthop::{Kind, Link, Managed, NeighState, Neighbour, Route, Topology, Uncached},
};

/// How long the programs trust the cache after the last renewal.
const LEASE: Duration = Duration::from_millis(500);
/// How often the follower wakes without a notification: lease, generation.
const TICK: Duration = Duration::from_millis(50);
/// Time left between two writes of the default hop (see `HopCache::set_default`).
const FLIP_GAP: Duration = Duration::from_millis(1);

// rtnetlink multicast groups (RTNLGRP_*).
const GROUPS: [u32; 6] = [
    1,  // LINK
    3,  // NEIGH
    5,  // IPV4_IFADDR
    7,  // IPV4_ROUTE
    8,  // IPV4_RULE
    24, // IPV4_NETCONF
];

/// What the follower reports as it goes, for `floatip follow -v` and the
/// staleness test (the time is the wall clock in µs, to match packet
/// captures).
pub fn report(verbose: bool, what: std::fmt::Arguments) {
    if verbose {
        eprintln!("follow: {} {what}", wall_us());
    }
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A neighbour: egress ifindex and address.
type NeighbourKey = (u32, Ipv4Addr);

/// What the follower wrote for a pair: its fixed IP, the hop, the neighbour
/// the hop goes through.
type Written = (Ipv4Addr, NextHop, Option<NeighbourKey>);

pub struct Follower {
    dp: Dataplane,
    cache: HopCache,
    topo: Topology,
    epoch: u32,
    generation: u64,
    /// floating -> (fixed, the hop written, the neighbour it goes through).
    pairs: HashMap<Ipv4Addr, Written>,
    /// neighbour -> the floating IPs whose packets go to it.
    by_via: HashMap<NeighbourKey, HashSet<Ipv4Addr>>,
    /// Neighbours asked to be probed, and when.
    probed: HashMap<NeighbourKey, Instant>,
    last_flip: Instant,
    /// The default hop last written (None: write it whatever it is).
    default: Option<NextHop>,
    verbose: bool,
}

impl Follower {
    pub fn new(bpffs: &Path, verbose: bool) -> Result<Self> {
        let dp = Dataplane::open(bpffs)?;
        let cache = dp.hop_cache()?;
        let epoch = cache.routing()?.epoch;
        Ok(Self {
            dp,
            cache,
            topo: Topology::default(),
            epoch,
            // Set by the first sync, which `run` starts with.
            generation: 0,
            pairs: HashMap::new(),
            by_via: HashMap::new(),
            probed: HashMap::new(),
            last_flip: Instant::now() - FLIP_GAP,
            default: None,
            verbose,
        })
    }

    /// Follows until `stop` is set, then withdraws the cache.
    pub fn run(&mut self, stop: &dyn Fn() -> bool) -> Result<()> {
        let events = subscribe()?;
        let result = self.follow(&events, stop);
        let withdrawn = self.cache.set_routing(Routing::default());
        report(self.verbose, format_args!("stopped: cache withdrawn"));
        result.and(withdrawn)
    }

    fn follow(&mut self, events: &Socket, stop: &dyn Fn() -> bool) -> Result<()> {
        self.resync("start")?;
        let mut buf = vec![0u8; 1 << 20];
        while !stop() {
            let mut pfd = libc::pollfd {
                fd: events.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            unsafe { libc::poll(&mut pfd, 1, TICK.as_millis() as i32) };
            let mut topology = false;
            let mut neighbours = Vec::new();
            let mut notified = None;
            loop {
                let n = match events.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
                    Ok(n) => {
                        notified.get_or_insert_with(wall_us);
                        n
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // ENOBUFS: notifications were lost; only a full resync is safe.
                    Err(_) => {
                        topology = true;
                        break;
                    }
                };
                for msg in messages(&buf[..n]) {
                    match msg {
                        Some(RouteNetlinkMessage::NewNeighbour(m)) => {
                            neighbours.extend(neighbour(&m, false))
                        }
                        Some(RouteNetlinkMessage::DelNeighbour(m)) => {
                            neighbours.extend(neighbour(&m, true))
                        }
                        // Anything else (routes, links, addresses, rules,
                        // netconf, or what does not parse) may move routes.
                        _ => topology = true,
                    }
                }
            }
            if topology {
                self.resync("routes, links or rules changed")?;
            } else if !neighbours.is_empty() {
                self.neighbours_changed(neighbours)?;
            }
            if let Some(at) = notified {
                let now = wall_us();
                report(
                    self.verbose,
                    format_args!(
                        "handled ({}, notified at {at}, {} µs after)",
                        if topology { "topology" } else { "neighbours" },
                        now - at
                    ),
                );
            }
            self.renew()?;
            if self.dp.generation()? != self.generation {
                self.sync_pairs()?;
            }
        }
        Ok(())
    }

    /// Writes the current epoch with a fresh lease.
    fn renew(&mut self) -> Result<()> {
        let r = Routing {
            epoch: self.epoch,
            lease_ns: coarse_now_ns() + LEASE.as_nanos() as u64,
            ..self.cache.routing()?
        };
        self.cache.set_routing(r)
    }

    /// Invalidates everything, then resolves everything from fresh dumps.
    fn resync(&mut self, why: &str) -> Result<()> {
        self.epoch = match self.epoch.wrapping_add(1) {
            0 => 1,
            e => e,
        };
        self.renew()?;
        report(self.verbose, format_args!("epoch {} ({why})", self.epoch));
        self.topo = snapshot(&self.dp)?;
        // An address change is one of the events that brings us here.
        self.dp.refresh_gateway_addresses()?;
        self.cache.set_filter(&self.topo.route_filter())?;
        self.default = None;
        self.write_default()?;
        self.pairs.clear();
        self.by_via.clear();
        self.sync_pairs()
    }

    fn write_default(&mut self) -> Result<()> {
        let hop = match self.topo.default_hop(self.epoch) {
            Ok(h) => h,
            Err(why) => {
                self.probe(why);
                NextHop::default()
            }
        };
        if self.default == Some(hop) {
            return Ok(());
        }
        let since = self.last_flip.elapsed();
        if since < FLIP_GAP {
            std::thread::sleep(FLIP_GAP - since);
        }
        self.cache.set_default(hop)?;
        self.last_flip = Instant::now();
        self.default = Some(hop);
        Ok(())
    }

    /// Resolves pairs that are new or moved since the last look.
    fn sync_pairs(&mut self) -> Result<()> {
        let generation = self.dp.generation()?;
        let mut seen = HashSet::new();
        for (floating, fixed, hop) in self.dp.hops()? {
            seen.insert(floating);
            if self
                .pairs
                .get(&floating)
                .is_some_and(|(x, h, _)| *x == fixed && *h == hop)
            {
                continue;
            }
            self.write_hop(floating, fixed)?;
        }
        let gone: Vec<Ipv4Addr> = self
            .pairs
            .keys()
            .filter(|f| !seen.contains(f))
            .copied()
            .collect();
        for f in gone {
            self.forget(f);
        }
        self.generation = generation;
        Ok(())
    }

    fn write_hop(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
        let hop = match self.topo.hop(fixed, self.epoch) {
            Ok(h) => h,
            Err(why) => {
                self.probe(why);
                NextHop::default()
            }
        };
        self.forget(floating);
        if self.dp.set_hop(floating, fixed, hop)? {
            let via = self.topo.via(fixed);
            if let Some(v) = via {
                self.by_via.entry(v).or_default().insert(floating);
            }
            self.pairs.insert(floating, (fixed, hop, via));
        }
        Ok(())
    }

    fn forget(&mut self, floating: Ipv4Addr) {
        if let Some((_, _, Some(v))) = self.pairs.remove(&floating)
            && let Some(set) = self.by_via.get_mut(&v)
        {
            set.remove(&floating);
            if set.is_empty() {
                self.by_via.remove(&v);
            }
        }
    }

    fn neighbours_changed(
        &mut self,
        changes: Vec<((u32, Ipv4Addr), Option<Neighbour>)>,
    ) -> Result<()> {
        let mut affected = Vec::new();
        for (key, n) in changes {
            report(
                self.verbose,
                format_args!(
                    "neighbour {} on {}: {}",
                    key.1,
                    key.0,
                    match &n {
                        Some(n) => format!(
                            "{:?} {}",
                            n.state,
                            n.mac.map_or_else(|| "-".to_owned(), |m| iface::fmt_mac(&m))
                        ),
                        None => "deleted".to_owned(),
                    }
                ),
            );
            match n {
                Some(n) => self.topo.neighbours.insert(key, n),
                None => self.topo.neighbours.remove(&key),
            };
            // The pairs whose packets go to it (their fixed IP, or a
            // router on the way): resolved again.
            for f in self.by_via.get(&key).into_iter().flatten() {
                if let Some((x, _, _)) = self.pairs.get(f) {
                    affected.push((*f, *x));
                }
            }
        }
        for (floating, fixed) in affected {
            self.write_hop(floating, fixed)?;
        }
        self.write_default()?;
        Ok(())
    }

    /// Asks the kernel to confirm a STALE neighbour the cache would use (as
    /// its own forwarding would on the next packet), at most every 5 s.
    fn probe(&mut self, why: Uncached) {
        if let Uncached::Neighbour(ifindex, addr, NeighState::Stale) = why {
            let due = self
                .probed
                .get(&(ifindex, addr))
                .is_none_or(|t| t.elapsed() > Duration::from_secs(5));
            if due {
                self.probed.insert((ifindex, addr), Instant::now());
                let _ = use_neighbour(ifindex, addr);
            }
        }
    }
}

fn subscribe() -> Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE).context("cannot open an rtnetlink socket")?;
    s.bind(&SocketAddr::new(0, 0))?;
    for g in GROUPS {
        s.add_membership(g)
            .with_context(|| format!("cannot join rtnetlink group {g}"))?;
    }
    let _ = s.set_rx_buf_sz(4 << 20);
    Ok(s)
}

/// The payloads of the netlink messages in one datagram (`None`: one that
/// does not parse).
fn payloads(mut buf: &[u8]) -> Vec<Option<NetlinkPayload<RouteNetlinkMessage>>> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        out.push(
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len])
                .ok()
                .map(|m| m.payload),
        );
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// The rtnetlink messages in one datagram of notifications.
fn messages(buf: &[u8]) -> Vec<Option<RouteNetlinkMessage>> {
    payloads(buf)
        .into_iter()
        .map(|p| match p {
            Some(NetlinkPayload::InnerMessage(i)) => Some(i),
            _ => None,
        })
        .collect()
}

/// Sends one request and collects the inner messages of the reply (a dump
/// or an acknowledgement).
fn request(msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>> {
    let mut s = Socket::new(NETLINK_ROUTE).context("cannot open an rtnetlink socket")?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    let mut nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
    nl.header.flags = flags;
    nl.header.sequence_number = 1;
    nl.finalize();
    let mut out = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut out);
    s.send(&out, 0)?;
    let mut result = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.recv(&mut &mut buf[..], 0)?;
        for p in payloads(&buf[..n]) {
            match p {
                Some(NetlinkPayload::Done(_)) => return Ok(result),
                Some(NetlinkPayload::Error(e)) => match e.code {
                    None => return Ok(result),
                    Some(code) => bail!(
                        "rtnetlink: {}",
                        std::io::Error::from_raw_os_error(-code.get())
                    ),
                },
                Some(NetlinkPayload::InnerMessage(i)) => result.push(i),
                _ => {}
            }
        }
        if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
            return Ok(result);
        }
    }
}

fn dump(msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
    request(msg, NLM_F_REQUEST | NLM_F_DUMP)
}

/// Asks the kernel to use (and so confirm) a neighbour: `NTF_USE`.
fn use_neighbour(ifindex: u32, addr: Ipv4Addr) -> Result<()> {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = ifindex;
    m.header.flags = NeighbourFlags::Use;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            addr,
        )));
    request(
        RouteNetlinkMessage::NewNeighbour(m),
        NLM_F_REQUEST | NLM_F_ACK,
    )?;
    Ok(())
}

fn neighbour(m: &NeighbourMessage, deleted: bool) -> Option<(NeighbourKey, Option<Neighbour>)> {
    if m.header.family != AddressFamily::Inet {
        return None;
    }
    let mut addr = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => addr = Some(*ip),
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                mac = Some([l[0], l[1], l[2], l[3], l[4], l[5]])
            }
            _ => {}
        }
    }
    let key = (m.header.ifindex, addr?);
    if deleted {
        return Some((key, None));
    }
    let state = match m.header.state {
        NeighbourState::Reachable | NeighbourState::Permanent | NeighbourState::Noarp => {
            NeighState::Valid
        }
        NeighbourState::Stale => NeighState::Stale,
        _ => NeighState::Unconfirmed,
    };
    Some((key, Some(Neighbour { state, mac })))
}

fn link(m: &LinkMessage) -> (u32, Link) {
    let mut l = Link {
        mtu: 1500,
        mac: [0; 6],
        up: m.header.flags.contains(LinkFlags::Up) && m.header.flags.contains(LinkFlags::LowerUp),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
            LinkAttribute::Address(a) if a.len() == 6 => {
                l.mac.copy_from_slice(a);
            }
            _ => {}
        }
    }
    (m.header.index, l)
}

fn route(m: &RouteMessage) -> Option<Route> {
    if m.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut r = Route {
        table: u32::from(m.header.table),
        dst: Ipv4Addr::UNSPECIFIED,
        len: m.header.destination_prefix_length,
        kind: match m.header.kind {
            RouteType::Unicast => Kind::Unicast,
            RouteType::Local | RouteType::Broadcast | RouteType::Anycast => Kind::Local,
            _ => Kind::Other,
        },
        tos: m.header.tos,
        priority: 0,
        oif: None,
        gateway: None,
        mtu: None,
        multipath: false,
        dead: m
            .header
            .flags
            .intersects(RouteFlags::Dead | RouteFlags::Linkdown),
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => r.dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gateway = Some(*g),
            RouteAttribute::Oif(o) => r.oif = Some(*o),
            RouteAttribute::Priority(p) => r.priority = *p,
            RouteAttribute::MultiPath(_) => r.multipath = true,
            RouteAttribute::Metrics(ms) => {
                for metric in ms {
                    if let RouteMetric::Mtu(mtu) = metric {
                        r.mtu = Some(*mtu);
                    }
                }
            }
            _ => {}
        }
    }
    Some(r)
}

/// Whether the rules are the kernel's three defaults: every lookup goes
/// local, then main, then default, whatever the source or mark.
fn default_rules(rules: &[RuleMessage]) -> bool {
    let mut tables = Vec::new();
    for m in rules {
        if m.header.family != AddressFamily::Inet {
            continue;
        }
        let mut table = u32::from(m.header.table);
        let mut priority = 0;
        for a in &m.attributes {
            match a {
                RuleAttribute::Table(t) => table = *t,
                RuleAttribute::Priority(p) => priority = *p,
                // Any selector makes the answer depend on more than the destination.
                RuleAttribute::Source(_)
                | RuleAttribute::Destination(_)
                | RuleAttribute::Iifname(_)
                | RuleAttribute::Oifname(_)
                | RuleAttribute::FwMark(_) => return false,
                _ => {}
            }
        }
        if m.header.src_len != 0 || m.header.dst_len != 0 || m.header.tos != 0 {
            return false;
        }
        tables.push((priority, table));
    }
    tables.sort();
    tables == [(0, 255), (32766, 254), (32767, 253)]
}

/// Everything the resolution needs, dumped afresh.
fn snapshot(dp: &Dataplane) -> Result<Topology> {
    let mut topo = Topology::default();
    let mut names = Vec::new();
    for (role, external) in [(Role::External, true), (Role::Internal, false)] {
        for (ifindex, _) in dp.nics(role)? {
            topo.managed.insert(ifindex, Managed { external });
            names.extend(iface::name(ifindex));
        }
    }
    for m in dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
        if let RouteNetlinkMessage::NewLink(l) = m {
            let (i, l) = link(&l);
            topo.links.insert(i, l);
        }
    }
    let mut rm = RouteMessage::default();
    rm.header.address_family = AddressFamily::Inet;
    // Table 0 in a dump request: every table.
    for m in dump(RouteNetlinkMessage::GetRoute(rm))? {
        if let RouteNetlinkMessage::NewRoute(r) = m {
            topo.routes.extend(route(&r));
        }
    }
    let mut rules = Vec::new();
    let mut q = RuleMessage::default();
    q.header.family = AddressFamily::Inet;
    for m in dump(RouteNetlinkMessage::GetRule(q))? {
        if let RouteNetlinkMessage::NewRule(r) = m {
            rules.push(r);
        }
    }
    topo.default_rules_only = default_rules(&rules);
    let mut nm = NeighbourMessage::default();
    nm.header.family = AddressFamily::Inet;
    for m in dump(RouteNetlinkMessage::GetNeighbour(nm))? {
        if let RouteNetlinkMessage::NewNeighbour(n) = m
            && let Some((key, Some(n))) = neighbour(&n, false)
        {
            topo.neighbours.insert(key, n);
        }
    }
    // /proc/sys/net is the reading process's own namespace's.
    topo.forwarding = names.iter().all(|n| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{n}/forwarding"))
            .is_ok_and(|v| v.trim() == "1")
    });
    Ok(topo)
}
