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
            out.push((name, Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
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

/// The id of the XDP program attached to `ifindex` in any mode (IFLA_XDP of RTM_GETLINK, as
/// `ip link` shows it), or `None`.
pub fn xdp_program(ifindex: u32) -> Result<Option<u32>> {
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
    let mut id = None;
    attributes(&msg[32..], |ty, v| {
        if ty == IFLA_XDP {
            attributes(v, |ty, v| {
                if ty == IFLA_XDP_PROG_ID {
                    id = word(v).map(u32::from_ne_bytes).filter(|i| *i != 0);
                }
            });
        }
    });
    Ok(id)
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
