//! Raw sockets inside the labs' namespaces, opened in-process: a thread
//! enters the namespace (`setns` changes only the calling thread), opens
//! the socket and returns it; a socket keeps the namespace it was made in.
//! No subprocess per frame, so a case costs microseconds to inject.

use std::{
    fs::File,
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Runs `f` on a thread inside network namespace `ns` (/run/netns/NS).
pub fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(format!("/run/netns/{ns}"))
                .with_context(|| format!("no namespace {ns}"))?;
            // SAFETY: setns on a descriptor we own; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {ns}: {}", io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn check(rc: libc::c_int, what: &str) -> Result<libc::c_int> {
    if rc < 0 {
        bail!("{what}: {}", io::Error::last_os_error());
    }
    Ok(rc)
}

fn ifindex(ifname: &str) -> Result<libc::c_int> {
    let c = std::ffi::CString::new(ifname)?;
    // SAFETY: a valid NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface {ifname}: {}", io::Error::last_os_error());
    }
    Ok(i as libc::c_int)
}

/// setsockopt(2) of an int option.
pub fn setopt(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> Result<()> {
    // SAFETY: an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(rc, "setsockopt").map(drop)
}

/// A frame as a packet socket received it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The frame with its VLAN tag put back where the wire had it (the
    /// kernel moves an outer tag into the skb's metadata before taps).
    pub bytes: Vec<u8>,
    /// The L4 checksum is still to be completed (CHECKSUM_PARTIAL): its
    /// field holds the pseudo-header sum only.
    pub csum_partial: bool,
}

/// An AF_PACKET socket bound to one interface of one namespace.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: libc::c_int,
    what: String,
}

impl PacketSocket {
    /// A send-only socket on `ifname` in `ns` (protocol 0: it receives nothing).
    pub fn sender(ns: &str, ifname: &str) -> Result<PacketSocket> {
        Self::open(ns, ifname, 0)
    }

    /// A socket receiving every frame that arrives on `ifname` in `ns`
    /// (not the ones sent from it), with VLAN and checksum metadata.
    pub fn receiver(ns: &str, ifname: &str) -> Result<PacketSocket> {
        let s = Self::open(ns, ifname, (libc::ETH_P_ALL as u16).to_be())?;
        let fd = s.fd.as_raw_fd();
        setopt(fd, libc::SOL_PACKET, libc::PACKET_AUXDATA, 1)?;
        setopt(fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)?;
        setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)?;
        // Frames of other interfaces queued between socket() and bind().
        s.drain();
        Ok(s)
    }

    fn open(ns: &str, ifname: &str, proto_be: u16) -> Result<PacketSocket> {
        let what = format!("{ns}/{ifname}");
        in_namespace(ns, || {
            // SAFETY: plain socket(2).
            let fd = check(
                unsafe {
                    libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                        proto_be as libc::c_int,
                    )
                },
                "socket(AF_PACKET)",
            )?;
            // SAFETY: a descriptor socket(2) just returned.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let ifindex = ifindex(ifname)?;
            // SAFETY: sockaddr_ll is plain data.
            let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto_be;
            sll.sll_ifindex = ifindex;
            // SAFETY: a sockaddr_ll of the size passed.
            check(
                unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&sll as *const libc::sockaddr_ll).cast(),
                        size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                },
                "bind(AF_PACKET)",
            )?;
            Ok(PacketSocket {
                fd,
                ifindex,
                what: what.clone(),
            })
        })
    }

    /// Transmits `frame` (Ethernet header included) on the interface.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and address are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            bail!(
                "send {} bytes on {}: {}",
                frame.len(),
                self.what,
                io::Error::last_os_error()
            );
        }
        Ok(())
    }

    fn drain(&self) {
        while self.recv().is_some() {}
    }

    /// One queued frame, if any (never blocks).
    pub fn recv(&self) -> Option<Received> {
        let mut buf = vec![0u8; 65536];
        let mut ctl = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 16]>();
        // SAFETY: see above.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        let mut aux: Option<libc::tpacket_auxdata> = None;
        // SAFETY: walking the control messages the kernel wrote into `ctl`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    aux = Some(std::ptr::read_unaligned(
                        libc::CMSG_DATA(c).cast::<libc::tpacket_auxdata>(),
                    ));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let mut csum_partial = false;
        if let Some(a) = aux {
            csum_partial = a.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0;
            if a.tp_status & libc::TP_STATUS_VLAN_VALID != 0 && buf.len() >= 12 {
                let tpid = if a.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                    a.tp_vlan_tpid
                } else {
                    0x8100
                };
                let mut tag = tpid.to_be_bytes().to_vec();
                tag.extend_from_slice(&a.tp_vlan_tci.to_be_bytes());
                buf.splice(12..12, tag);
            }
        }
        Some(Received {
            bytes: buf,
            csum_partial,
        })
    }

    /// Waits up to `timeout` for the socket to become readable.
    pub fn wait_readable(socks: &[&PacketSocket], timeout: Duration) {
        let mut fds: Vec<libc::pollfd> = socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid pollfd array of the length passed.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.as_millis() as libc::c_int,
            )
        };
    }
}

/// `/proc/net/snmp` of one namespace, re-read through a descriptor opened
/// inside it (a procfs net file keeps the namespace it was opened in).
pub struct Snmp {
    file: File,
}

impl Snmp {
    pub fn open(ns: &str) -> Result<Snmp> {
        in_namespace(ns, || {
            let file = File::open("/proc/thread-self/net/snmp")?;
            Ok(Snmp { file })
        })
    }

    /// The counters named `Proto.Field` in `fields`.
    pub fn read(&self, fields: &[&str]) -> Result<Vec<u64>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = &self.file;
        f.seek(SeekFrom::Start(0))?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        let mut map = std::collections::HashMap::new();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (Some((proto, names)), Some((_, values))) =
                (names.split_once(':'), values.split_once(':'))
            else {
                continue;
            };
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                map.insert(format!("{proto}.{n}"), v.parse::<u64>().unwrap_or(0));
            }
        }
        fields
            .iter()
            .map(|f| {
                map.get(*f)
                    .copied()
                    .with_context(|| format!("no {f} in /proc/net/snmp"))
            })
            .collect()
    }
}

/// Polls `done` every few milliseconds until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}
