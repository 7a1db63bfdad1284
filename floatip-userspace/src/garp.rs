//! Gratuitous ARP: when a floating IP is mapped (or moved), neighbours on
//! the external network must drop stale entries for it. Both forms are sent
//! (request and reply), three times, as arping -U/-A and Neutron do.

use std::{io, net::Ipv4Addr, thread, time::Duration};

use anyhow::Result;

/// Builds one gratuitous ARP frame (`op` 1 = request, 2 = reply).
pub fn frame(mac: &[u8; 6], ip: Ipv4Addr, op: u16) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes());
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address: zero in a request, broadcast in a reply.
    if op == 2 {
        f[32..38].copy_from_slice(&[0xff; 6]);
    }
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Announces `ip` at `mac` out of the interface `ifindex`.
pub fn announce(ifindex: u32, mac: &[u8; 6], ip: Ipv4Addr) -> Result<()> {
    crate::failpoint::pause("garp");
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            // Protocol 0: send-only (the protocol travels in each sendto
            // address), so no ARP traffic is queued to it while it is open.
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = 0x0806u16.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let mut result = Ok(());
    'rounds: for round in 0..3 {
        if round > 0 {
            // Repeats cover a lost frame; a short gap keeps `ip associate` fast.
            thread::sleep(Duration::from_millis(2));
        }
        for op in [1u16, 2] {
            let f = frame(mac, ip, op);
            let rc = unsafe {
                libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc < 0 {
                result = Err(io::Error::last_os_error().into());
                break 'rounds;
            }
        }
    }
    close_in_background(fd);
    result
}

/// Closes a packet socket without waiting for it. The last close of an
/// AF_PACKET socket waits for an RCU grace period (packet_release ->
/// synchronize_net), ~10 ms that would otherwise be half of `ip associate`.
/// A short-lived grandchild (reparented to init, so never a zombie of ours)
/// holds the last reference and pays that wait; our own close only drops a
/// reference. Between fork and exit the children make only raw system calls,
/// and they hold no file locks (fcntl locks are not inherited).
fn close_in_background(fd: libc::c_int) {
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            if libc::fork() == 0 {
                // Everything else first: a caller reading our stdout to EOF
                // must not wait for this process.
                let fd = fd as libc::c_uint;
                if fd > 0 {
                    libc::syscall(libc::SYS_close_range, 0, fd - 1, 0);
                }
                libc::syscall(libc::SYS_close_range, fd + 1, libc::c_uint::MAX, 0);
                libc::close(fd as libc::c_int);
            }
            libc::_exit(0);
        }
    }
    unsafe { libc::close(fd) };
    if pid > 0 {
        // The child exits right after its fork: this wait is short.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
}
