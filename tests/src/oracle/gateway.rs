//! The two gateways of the differential test, built the same way: the
//! standard [`Lab`] topology (ext - rtr - gw - bridge - inst1/inst2), made
//! deterministic (fixed MACs, permanent neighbours, a bridge that does not
//! learn, no checksum offload), with the same routes and the same
//! floating <-> fixed pairs. One gateway runs floatip; the other ("the
//! oracle") runs plain Linux forwarding with nftables DNAT/SNAT, conntrack
//! and strict reverse-path filtering, the way the Neutron L3 agent does it.

use std::{fs, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context, Result};

use super::socket::{PacketSocket, Received, Snmp};
use crate::netns::{self, Lab, Mode, Output, exec, host_command, run};

pub type Mac = [u8; 6];

pub const RTR_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x01];
pub const GW_EXT_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x02];
pub const GW_INT_MAC: Mac = [0x02, 0, 0, 0, 0x03, 0x01];
pub const INST1_MAC: Mac = [0x02, 0, 0, 0, 0x03, 0x11];
pub const INST2_MAC: Mac = [0x02, 0, 0, 0, 0x03, 0x12];
/// A unicast MAC no host of the lab has.
pub const FOREIGN_MAC: Mac = [0x02, 0, 0, 0, 0x0e, 0xee];

pub const EXT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const RTR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const GW_EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const GW_INT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const INST1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
pub const INST2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
pub const FIP1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const FIP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
/// Mapped to [`FIXED3`], which the gateway has an `unreachable` route for:
/// inbound packets to it make the gateway's kernel send an ICMP error.
pub const FIP3: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
pub const FIXED3: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
/// Mapped to [`ABSENT`], an address of the tenant network no host has (an
/// instance that is down): its neighbour entry never resolves, and the
/// gateway's kernel answers with host unreachable once ARP gives up.
pub const FIP4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 13);
pub const ABSENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 13);
/// The gateway has an `unreachable` route for 192.0.2.128/25; the router
/// has no route at all for the rest of 192.0.2.0/24 (net unreachable).
pub const UNREACHABLE_AT_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
pub const UNROUTED_AT_RTR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// Route MTU of the gateway's uplink and of its tenant network, below the
/// links' 1500: what a gateway on a smaller-MTU uplink (or an overlay
/// tenant network) has.
pub const ROUTE_MTU: usize = 1400;

pub const PAIRS: [(Ipv4Addr, Ipv4Addr); 4] =
    [(FIP1, INST1), (FIP2, INST2), (FIP3, FIXED3), (FIP4, ABSENT)];

/// Which gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Oracle,
    Floatip(Mode),
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Oracle => "oracle",
            Kind::Floatip(m) => m.as_str(),
        }
    }
}

/// Counters of `/proc/net/snmp` read on every receiving host around each case.
pub const COUNTERS: [&str; 7] = [
    "Ip.InHdrErrors",
    "Ip.ReasmFails",
    "Icmp.InCsumErrors",
    "Tcp.InCsumErrors",
    "Udp.InCsumErrors",
    "UdpLite.InCsumErrors",
    "Icmp.InDestUnreachs",
];

/// One built gateway lab with its injection and capture sockets.
pub struct Gateway {
    pub kind: Kind,
    /// Sends frames from the router onto the gateway's external link.
    pub ext_tx: PacketSocket,
    /// Sends frames from inst1 into the tenant network.
    pub int_tx: PacketSocket,
    /// What the gateway sends to the router (captured on the router's NIC).
    pub ext_rx: PacketSocket,
    /// What the gateway sends into the tenant network (on the bridge port).
    pub int_rx: PacketSocket,
    /// `/proc/net/snmp` of the hosts that receive what crosses the gateway.
    pub snmp: Vec<(&'static str, Snmp)>,
    pub lab: Lab,
}

fn mac_str(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ok(out: Output) -> Result<()> {
    out.check().map(drop)
}

fn ip(ns: &str, args: &[&str]) -> Result<()> {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend_from_slice(args);
    ok(run(host_command(&argv), netns::EXEC_TIMEOUT))
}

fn sysctl(ns: &str, kv: &str) -> Result<()> {
    ok(exec(ns, &["sysctl", "-qw", kv]))
}

impl Gateway {
    pub fn build(kind: Kind, floatip_bin: &Path, netprobe_bin: &Path) -> Result<Gateway> {
        // The oracle's lab is built as for xdp-generic (no XDP holders on
        // the peers); its offloads are then set like every lab's below.
        let mode = match kind {
            Kind::Oracle => Mode::XdpGeneric,
            Kind::Floatip(m) => m,
        };
        let lab = Lab::build(mode, floatip_bin, netprobe_bin)?;
        let l = &lab;
        let macs: [(&str, &str, Mac); 11] = [
            (&l.ext, "eth0", [0x02, 0, 0, 0, 0x01, 0x01]),
            (&l.rtr, "r-ext", [0x02, 0, 0, 0, 0x01, 0x02]),
            (&l.rtr, "r-gw", RTR_MAC),
            (&l.gw, "gw-ext", GW_EXT_MAC),
            (&l.gw, "gw-int", GW_INT_MAC),
            (&l.sw, "s-gw", [0x02, 0, 0, 0, 0x03, 0x02]),
            (&l.sw, "s-i1", [0x02, 0, 0, 0, 0x03, 0x03]),
            (&l.sw, "s-i2", [0x02, 0, 0, 0, 0x03, 0x04]),
            (&l.sw, "br0", [0x02, 0, 0, 0, 0x03, 0xfe]),
            (&l.inst1, "eth0", INST1_MAC),
            (&l.inst2, "eth0", INST2_MAC),
        ];
        for (ns, ifname, mac) in &macs {
            ip(
                ns,
                &["link", "set", "dev", ifname, "address", &mac_str(mac)],
            )?;
            // Every frame here is complete on the wire, as on a real one:
            // no end leaves a checksum for "hardware" to finish, nor a VLAN
            // tag to insert (the bridge keeps a tag it forwards in the
            // skb's metadata; with txvlan on, the veth would hand it over
            // there too, where XDP, as on a NIC that strips tags, cannot
            // see it).
            if *ifname != "br0" {
                ok(exec(
                    ns,
                    &["ethtool", "-K", ifname, "tx", "off", "txvlan", "off"],
                ))?;
            }
        }
        // A bridge that floods unknown unicast and knows the three hosts
        // statically: what it forwards does not depend on earlier traffic.
        for (port, mac) in [
            ("s-gw", GW_INT_MAC),
            ("s-i1", INST1_MAC),
            ("s-i2", INST2_MAC),
        ] {
            ip(
                &l.sw,
                &[
                    "link",
                    "set",
                    "dev",
                    port,
                    "type",
                    "bridge_slave",
                    "learning",
                    "off",
                ],
            )?;
            ok(exec(
                &l.sw,
                &[
                    "bridge",
                    "fdb",
                    "replace",
                    &mac_str(&mac),
                    "dev",
                    port,
                    "master",
                    "static",
                ],
            ))?;
        }
        // Permanent neighbours: no ARP exchange (and no timing) on any path
        // a case takes unless the case is about ARP.
        let neigh = |ns: &str, addr: Ipv4Addr, dev: &str, mac: &Mac| {
            ip(
                ns,
                &[
                    "neigh",
                    "replace",
                    &addr.to_string(),
                    "lladdr",
                    &mac_str(mac),
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ],
            )
        };
        neigh(&l.gw, RTR, "gw-ext", &RTR_MAC)?;
        neigh(&l.gw, INST1, "gw-int", &INST1_MAC)?;
        neigh(&l.gw, INST2, "gw-int", &INST2_MAC)?;
        for a in [GW_EXT, FIP1, FIP2, FIP3, FIP4] {
            neigh(&l.rtr, a, "r-gw", &GW_EXT_MAC)?;
        }
        neigh(&l.rtr, EXT, "r-ext", &macs[0].2)?;
        neigh(&l.ext, Ipv4Addr::new(198, 51, 100, 1), "eth0", &macs[1].2)?;
        for ns in [&l.inst1, &l.inst2] {
            neigh(ns, GW_INT, "eth0", &GW_INT_MAC)?;
        }
        neigh(&l.inst1, INST2, "eth0", &INST2_MAC)?;
        neigh(&l.inst2, INST1, "eth0", &INST1_MAC)?;
        // No timing in what a case's frames cause. The hosts keep an
        // incomplete datagram for the whole run: a reassembly timeout (30 s)
        // would land in the counters of whatever case runs then. No ICMP
        // rate limit per destination anywhere: whether an error is sent
        // would depend on how long ago the last one to that address was,
        // which differs between the two gateways' runs. (Route errors keep
        // their host-wide limit, see `Case::rate_limited`.)
        for ns in [&l.ext, &l.rtr, &l.gw, &l.inst1, &l.inst2] {
            sysctl(ns, "net.ipv4.icmp_ratelimit=0")?;
        }
        for ns in [&l.ext, &l.inst1, &l.inst2] {
            sysctl(ns, "net.ipv4.ipfrag_time=3600")?;
        }
        // ARP for the one tenant address without a host gives up after
        // two probes 200 ms apart (not 3 s), so the socket check that waits
        // for the host unreachable is short.
        sysctl(&l.gw, "net.ipv4.neigh.gw-int.mcast_solicit=2")?;
        sysctl(&l.gw, "net.ipv4.neigh.gw-int.retrans_time_ms=200")?;
        // Routes: smaller route MTUs both ways, and unreachable destinations.
        let mtu = ROUTE_MTU.to_string();
        ip(
            &l.gw,
            &[
                "route",
                "replace",
                "default",
                "via",
                "203.0.113.1",
                "mtu",
                "lock",
                &mtu,
            ],
        )?;
        ip(
            &l.gw,
            &[
                "route",
                "replace",
                "10.0.0.0/24",
                "dev",
                "gw-int",
                "proto",
                "kernel",
                "scope",
                "link",
                "src",
                "10.0.0.1",
                "mtu",
                "lock",
                &mtu,
            ],
        )?;
        ip(&l.gw, &["route", "add", "unreachable", "192.0.2.128/25"])?;
        ip(&l.gw, &["route", "add", "unreachable", "10.0.1.0/24"])?;
        // The router discards what is addressed to private ranges, silently
        // (an unreachable it sent to ext would not cross the gateway, so
        // the barrier could not wait for it).
        ip(&l.rtr, &["route", "add", "blackhole", "10.0.0.0/8"])?;
        // The external sources of the inbound route-error cases (one each).
        ip(&l.rtr, &["route", "add", "blackhole", "198.51.100.128/25"])?;

        match kind {
            Kind::Oracle => Self::configure_oracle(&lab)?,
            Kind::Floatip(_) => {
                ok(lab.attach())?;
                for (f, x) in PAIRS {
                    ok(lab.floatip(&["nat", "add", &f.to_string(), &x.to_string()]))?;
                }
            }
        }

        let ext_tx = PacketSocket::sender(&lab.rtr, "r-gw")?;
        let int_tx = PacketSocket::sender(&lab.inst1, "eth0")?;
        let ext_rx = PacketSocket::receiver(&lab.rtr, "r-gw")?;
        let int_rx = PacketSocket::receiver(&lab.sw, "s-gw")?;
        let snmp = vec![
            ("inst1", Snmp::open(&lab.inst1)?),
            ("inst2", Snmp::open(&lab.inst2)?),
            ("ext", Snmp::open(&lab.ext)?),
        ];
        Ok(Gateway {
            kind,
            ext_tx,
            int_tx,
            ext_rx,
            int_rx,
            snmp,
            lab,
        })
    }

    /// Linux as a 1:1 NAT router: the floating IPs are addresses of the
    /// external NIC (the kernel answers ARP for them there, and only there:
    /// arp_ignore=1), DNAT before routing, SNAT of what leaves through the
    /// external NIC, conntrack (without its L4 checksum checks, see below),
    /// strict reverse-path filtering.
    fn configure_oracle(lab: &Lab) -> Result<()> {
        let gw = &lab.gw;
        for key in ["all", "default", "gw-ext", "gw-int"] {
            sysctl(gw, &format!("net.ipv4.conf.{key}.rp_filter=1"))?;
        }
        sysctl(gw, "net.ipv4.conf.all.arp_ignore=1")?;
        let mut dnat = String::new();
        let mut snat = String::new();
        for (f, x) in PAIRS {
            ip(gw, &["addr", "add", &format!("{f}/32"), "dev", "gw-ext"])?;
            dnat.push_str(&format!("    ip daddr {f} dnat to {x}\n"));
            snat.push_str(&format!(
                "    oifname \"gw-ext\" ip saddr {x} snat to {f}\n"
            ));
        }
        let rules = format!(
            "table ip oracle {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n{dnat}  }}\n  \
             chain post {{\n    type nat hook postrouting priority srcnat;\n{snat}  }}\n}}\n"
        );
        let file = lab.workdir.join("oracle.nft");
        fs::write(&file, rules).context("writing the nftables rules")?;
        ok(exec(gw, &["nft", "-f", &file.to_string_lossy()]))?;
        // This kernel's conntrack checks a UDP-Lite checksum against UDP's
        // pseudo-header (protocol 17, not 136: `udplite_error` passes
        // IPPROTO_UDP to `nf_checksum_partial`), so it finds every correct
        // UDP-Lite packet invalid, and NAT leaves invalid packets alone. A
        // router's NAT does not drop on L4 checksums (floatip does not check
        // them either); the receiving hosts still do, and their checksum
        // error counters are compared.
        sysctl(gw, "net.netfilter.nf_conntrack_checksum=0")
    }

    /// Every frame received so far at both capture points.
    pub fn take(&self) -> Vec<(super::observe::Point, Received)> {
        let mut v = Vec::new();
        for (point, sock) in [
            (super::observe::Point::Ext, &self.ext_rx),
            (super::observe::Point::Int, &self.int_rx),
        ] {
            while let Some(r) = sock.recv() {
                v.push((point, r));
            }
        }
        v
    }

    /// Waits until a capture socket has something or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        PacketSocket::wait_readable(&[&self.ext_rx, &self.int_rx], timeout);
    }

    /// The [`COUNTERS`] of every receiving host, as "HOST Counter" -> value.
    pub fn counters(&self) -> Result<Vec<(String, u64)>> {
        let mut v = Vec::new();
        for (host, s) in &self.snmp {
            for (name, value) in COUNTERS.iter().zip(s.read(&COUNTERS)?) {
                v.push((format!("{host} {name}"), value));
            }
        }
        Ok(v)
    }
}
