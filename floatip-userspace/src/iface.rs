//! Interface facts, read from the kernel through ioctl and getifaddrs (never
//! /sys/class/net, which shows the root namespace under `nsenter --net`).

use std::{
    ffi::{CStr, CString},
    io,
    net::Ipv4Addr,
};

use anyhow::{Result, bail};

/// Index of the interface `name` in this network namespace.
pub fn index(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| anyhow::anyhow!("bad interface name {name:?}"))?;
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("unknown interface {name}");
    }
    Ok(idx)
}

/// Name of the interface with index `idx`, if it still exists.
pub fn name(idx: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    let p = unsafe { libc::if_indextoname(idx, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// MAC address of the interface `name` (SIOCGIFHWADDR).
pub fn mac(name: &str) -> Result<[u8; 6]> {
    let req = if_ioctl(name, libc::SIOCGIFHWADDR, |_| {})
        .map_err(|e| anyhow::anyhow!("cannot read the MAC address of {name}: {e}"))?;
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

/// An interface ioctl on `name`, with the request's union set by `fill`.
fn if_ioctl(
    name: &str,
    request: libc::c_ulong,
    fill: impl FnOnce(&mut libc::ifreq),
) -> io::Result<libc::ifreq> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    fill(&mut req);
    let rc = unsafe { libc::ioctl(fd, request, &mut req) };
    let err = io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if rc < 0 { Err(err) } else { Ok(req) }
}

/// An rtnetlink socket with one request sent; closed on drop.
struct Rtnl(libc::c_int);

impl Rtnl {
    fn send(req: &[u8]) -> Result<Self> {
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let sock = Rtnl(fd);
        if unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) } < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(sock)
    }

    /// The next reply datagram.
    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<&'b [u8]> {
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(&buf[..n as usize])
    }
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

/// Each attribute (type without the nested flag, payload) of an rtnetlink attribute block.
fn attributes(data: &[u8], mut f: impl FnMut(u16, &[u8])) {
    const NLA_F_NESTED: u16 = 1 << 15;
    let mut off = 0;
    while off + 4 <= data.len() {
        let len = u16::from_ne_bytes([data[off], data[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([data[off + 2], data[off + 3]]) & !NLA_F_NESTED;
        if len < 4 || off + len > data.len() {
            break;
        }
        f(ty, &data[off + 4..off + len]);
        off += (len + 3) & !3;
    }
}

fn word(v: &[u8]) -> Option<[u8; 4]> {
    v.get(..4).map(|w| [w[0], w[1], w[2], w[3]])
}

/// Every IPv4 address configured on this namespace's interfaces, with the
/// interface's name.
pub fn addresses() -> Result<Vec<(String, Ipv4Addr)>> {
    Ok(networks()?.into_iter().map(|(n, a, _)| (n, a)).collect())
}

/// Every IPv4 address configured on this namespace's interfaces, with the
/// interface's name and the prefix length of its netmask.
pub fn networks() -> Result<Vec<(String, Ipv4Addr, u8)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET {
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned();
            let len = if ifa.ifa_netmask.is_null() {
                32
            } else {
                let mask = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
                u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
            };
            out.push((name, Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)), len));
        }
        cur = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Formats a MAC address the usual way.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The interface the kernel's routing table sends `dst` out of
/// (RTM_GETROUTE over rtnetlink, like `ip route get`); `None` when there is
/// no route.
pub fn route_oif(dst: Ipv4Addr) -> Result<Option<u32>> {
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    // nlmsghdr (16) + rtmsg (12) + RTA_DST (4 + 4).
    let mut req = [0u8; 36];
    req[0..4].copy_from_slice(&36u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_INET as u8;
    req[17] = 32; // rtm_dst_len
    req[28..30].copy_from_slice(&8u16.to_ne_bytes());
    req[30..32].copy_from_slice(&RTA_DST.to_ne_bytes());
    req[32..36].copy_from_slice(&dst.octets());
    let mut buf = vec![0u8; 4096];
    let msg = Rtnl::send(&req)?.recv(&mut buf)?.to_vec();
    if msg.len() < 16 {
        bail!("short rtnetlink reply");
    }
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if kind == libc::NLMSG_ERROR as u16 || msg.len() < 28 {
        // ENETUNREACH and friends: no route.
        return Ok(None);
    }
    let mut oif = None;
    attributes(&msg[28..], |ty, v| {
        if ty == RTA_OIF {
            oif = word(v).map(u32::from_ne_bytes);
        }
    });
    Ok(oif)
}

/// A unicast route of the main table: `dst/len` out of interface `oif`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub len: u8,
    pub oif: u32,
}

/// Every IPv4 unicast route of the main table (RTM_GETROUTE dump, like `ip route show`).
pub fn routes() -> Result<Vec<Route>> {
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    const RTA_TABLE: u16 = 15;
    const RT_TABLE_MAIN: u32 = 254;
    const RTN_UNICAST: u8 = 1;
    // nlmsghdr (16) + rtmsg (12).
    let mut req = [0u8; 28];
    req[0..4].copy_from_slice(&28u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_INET as u8;
    let sock = Rtnl::send(&req)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut msg = sock.recv(&mut buf)?;
        while msg.len() >= 16 {
            let len = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
            let kind = u16::from_ne_bytes([msg[4], msg[5]]);
            if len < 16 || len > msg.len() {
                bail!("malformed rtnetlink reply");
            }
            if kind == libc::NLMSG_DONE as u16 {
                return Ok(out);
            }
            if kind == libc::NLMSG_ERROR as u16 {
                bail!("rtnetlink refused the route dump");
            }
            let body = &msg[16..len];
            if kind == libc::RTM_NEWROUTE && body.len() >= 12 && body[7] == RTN_UNICAST {
                let mut route = Route {
                    dst: Ipv4Addr::UNSPECIFIED,
                    len: body[1],
                    oif: 0,
                };
                let mut table = u32::from(body[4]);
                attributes(&body[12..], |ty, v| match (ty, word(v)) {
                    (RTA_DST, Some(w)) => route.dst = Ipv4Addr::from(w),
                    (RTA_OIF, Some(w)) => route.oif = u32::from_ne_bytes(w),
                    (RTA_TABLE, Some(w)) => table = u32::from_ne_bytes(w),
                    _ => {}
                });
                if table == RT_TABLE_MAIN && route.oif != 0 {
                    out.push(route);
                }
            }
            msg = &msg[((len + 3) & !3).min(msg.len())..];
        }
    }
}

/// What RTM_GETLINK tells of one interface (as `ip -s link` shows it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// The XDP program attached in any mode (IFLA_XDP_PROG_ID).
    pub xdp_program: Option<u32>,
    /// Frames the driver dropped or failed to send: where frames XDP transmits or redirects
    /// into a veth without NAPI on its peer end up (IFLA_STATS64).
    pub tx_dropped: u64,
    pub tx_errors: u64,
}

/// [`LinkInfo`] of the interface `ifindex`; `None` when there is none.
pub fn link_info(ifindex: u32) -> Result<Option<LinkInfo>> {
    const IFLA_STATS64: u16 = 23;
    const IFLA_XDP: u16 = 43;
    const IFLA_XDP_PROG_ID: u16 = 4;
    // nlmsghdr (16) + ifinfomsg (16).
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNSPEC as u8;
    req[20..24].copy_from_slice(&ifindex.to_ne_bytes());
    let mut buf = vec![0u8; 32 * 1024];
    let msg = Rtnl::send(&req)?.recv(&mut buf)?.to_vec();
    if msg.len() < 32 || u16::from_ne_bytes([msg[4], msg[5]]) != libc::RTM_NEWLINK {
        return Ok(None);
    }
    let mut info = LinkInfo::default();
    // struct rtnl_link_stats64: u64 counters, tx_errors 6th, tx_dropped 8th.
    let counter = |v: &[u8], i: usize| {
        v.get(i * 8..i * 8 + 8)
            .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
    };
    attributes(&msg[32..], |ty, v| match ty {
        IFLA_XDP => attributes(v, |ty, v| {
            if ty == IFLA_XDP_PROG_ID {
                info.xdp_program = word(v).map(u32::from_ne_bytes).filter(|i| *i != 0);
            }
        }),
        IFLA_STATS64 => {
            info.tx_errors = counter(v, 5);
            info.tx_dropped = counter(v, 7);
        }
        _ => {}
    });
    Ok(Some(info))
}

/// The kernel driver of the interface `name` (ETHTOOL_GDRVINFO, as `ethtool -i` shows it).
pub fn driver(name: &str) -> Result<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    // struct ethtool_drvinfo: cmd, then driver[32], version[32], ... (196 bytes in all).
    let mut info = [0u8; 196];
    info[0..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    if_ioctl(name, libc::SIOCETHTOOL, |req| {
        req.ifr_ifru.ifru_data = info.as_mut_ptr().cast();
    })
    .map_err(|e| anyhow::anyhow!("cannot read the driver of {name}: {e}"))?;
    let drv = &info[4..36];
    let end = drv.iter().position(|b| *b == 0).unwrap_or(drv.len());
    Ok(String::from_utf8_lossy(&drv[..end]).into_owned())
}

/// The sum of the driver's XDP error and drop counters of `name` (`ethtool -S` names matching
/// `xdp` and `err` or `drop`): where a veth counts the frames XDP transmits or redirects into it
/// while its peer runs no NAPI. `None` when the driver keeps no such counter.
pub fn xdp_errors(name: &str) -> Result<Option<u64>> {
    const ETHTOOL_GSTRINGS: u32 = 0x1b;
    const ETHTOOL_GSTATS: u32 = 0x1d;
    const ETHTOOL_GSSET_INFO: u32 = 0x37;
    const ETH_SS_STATS: u32 = 1;
    const ETH_GSTRING_LEN: usize = 32;
    let ethtool = |buf: &mut [u8]| {
        if_ioctl(name, libc::SIOCETHTOOL, |req| {
            req.ifr_ifru.ifru_data = buf.as_mut_ptr().cast();
        })
        .map(drop)
    };
    // struct ethtool_sset_info: cmd, reserved, u64 sset_mask, then one u32 per set asked.
    let mut info = [0u8; 20];
    info[0..4].copy_from_slice(&ETHTOOL_GSSET_INFO.to_ne_bytes());
    info[8..16].copy_from_slice(&(1u64 << ETH_SS_STATS).to_ne_bytes());
    if ethtool(&mut info).is_err() {
        return Ok(None);
    }
    let mask = u64::from_ne_bytes(info[8..16].try_into().unwrap_or([0; 8]));
    let n = if mask & (1 << ETH_SS_STATS) != 0 {
        u32::from_ne_bytes(info[16..20].try_into().unwrap_or([0; 4])) as usize
    } else {
        0
    };
    if n == 0 {
        return Ok(None);
    }
    // struct ethtool_gstrings: cmd, string_set, len, then len names of 32 bytes.
    let mut names = vec![0u8; 12 + n * ETH_GSTRING_LEN];
    names[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    names[4..8].copy_from_slice(&ETH_SS_STATS.to_ne_bytes());
    names[8..12].copy_from_slice(&(n as u32).to_ne_bytes());
    ethtool(&mut names).map_err(|e| anyhow::anyhow!("cannot read the counters of {name}: {e}"))?;
    // struct ethtool_stats: cmd, n_stats, then n u64 values.
    let mut stats = vec![0u8; 8 + n * 8];
    stats[0..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
    stats[4..8].copy_from_slice(&(n as u32).to_ne_bytes());
    ethtool(&mut stats).map_err(|e| anyhow::anyhow!("cannot read the counters of {name}: {e}"))?;
    let mut sum = None;
    for i in 0..n {
        let raw = &names[12 + i * ETH_GSTRING_LEN..12 + (i + 1) * ETH_GSTRING_LEN];
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        let label = String::from_utf8_lossy(&raw[..end]);
        if label.contains("xdp") && (label.contains("err") || label.contains("drop")) {
            let v = u64::from_ne_bytes(stats[8 + i * 8..16 + i * 8].try_into().unwrap_or([0; 8]));
            *sum.get_or_insert(0) += v;
        }
    }
    Ok(sum)
}

/// Adds `addr/len` to interface `ifindex` (RTM_NEWADDR, like `ip addr replace`); adding an
/// address it already has succeeds.
pub fn address_add(ifindex: u32, addr: Ipv4Addr, len: u8) -> Result<()> {
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE;
    address_request(libc::RTM_NEWADDR, flags as u16, ifindex, addr, len)
        .map_err(|e| anyhow::anyhow!("cannot add {addr}/{len} to interface {ifindex}: {e}"))
}

/// Removes `addr/len` from interface `ifindex` (RTM_DELADDR); an address it does not have is
/// not an error.
pub fn address_del(ifindex: u32, addr: Ipv4Addr, len: u8) -> Result<()> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    match address_request(libc::RTM_DELADDR, flags, ifindex, addr, len) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        r => r.map_err(|e| {
            anyhow::anyhow!("cannot remove {addr}/{len} from interface {ifindex}: {e}")
        }),
    }
}

/// One RTM_NEWADDR/RTM_DELADDR of an IPv4 address, answered by the kernel's ack.
fn address_request(kind: u16, flags: u16, ifindex: u32, addr: Ipv4Addr, len: u8) -> io::Result<()> {
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    // nlmsghdr (16) + ifaddrmsg (8) + IFA_LOCAL (4 + 4) + IFA_ADDRESS (4 + 4).
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&kind.to_ne_bytes());
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_INET as u8;
    req[17] = len;
    req[19] = libc::RT_SCOPE_UNIVERSE;
    req[20..24].copy_from_slice(&ifindex.to_ne_bytes());
    for (at, ty) in [(24, IFA_LOCAL), (32, IFA_ADDRESS)] {
        req[at..at + 2].copy_from_slice(&8u16.to_ne_bytes());
        req[at + 2..at + 4].copy_from_slice(&ty.to_ne_bytes());
        req[at + 4..at + 8].copy_from_slice(&addr.octets());
    }
    let sock = Rtnl::send(&req).map_err(io::Error::other)?;
    let mut buf = vec![0u8; 4096];
    let msg = sock.recv(&mut buf).map_err(io::Error::other)?;
    if msg.len() >= 20 && u16::from_ne_bytes([msg[4], msg[5]]) == libc::NLMSG_ERROR as u16 {
        let code = i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]]);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok(())
}
