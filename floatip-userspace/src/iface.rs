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
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if rc < 0 {
        bail!("cannot read the MAC address of {name}: {err}");
    }
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
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
    let sent = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
    let mut buf = vec![0u8; 4096];
    let n = if sent < 0 {
        -1
    } else {
        unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) }
    };
    let err = io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if n < 0 {
        return Err(err.into());
    }
    let msg = &buf[..n as usize];
    if msg.len() < 16 {
        bail!("short rtnetlink reply");
    }
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if kind == libc::NLMSG_ERROR as u16 {
        // ENETUNREACH and friends: no route.
        return Ok(None);
    }
    let mut off = 16 + 12;
    while off + 4 <= msg.len() {
        let len = u16::from_ne_bytes([msg[off], msg[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([msg[off + 2], msg[off + 3]]);
        if len < 4 || off + len > msg.len() {
            break;
        }
        if ty == RTA_OIF && len >= 8 {
            let v = &msg[off + 4..off + 8];
            return Ok(Some(u32::from_ne_bytes([v[0], v[1], v[2], v[3]])));
        }
        off += (len + 3) & !3;
    }
    Ok(None)
}
