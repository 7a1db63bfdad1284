//! Gratuitous ARP: when a floating IP is mapped (or moved), neighbours on
//! the external network must drop stale entries for it. Both forms are sent
//! (request and reply), three times, as arping -U/-A and Neutron do: by the CLI before it
//! exits ([`announce`]), by the agent from a thread of its own ([`Announcer`]).

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::Duration,
};

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

/// One address to announce: `ip` at `mac` out of the interface `ifindex`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
}

/// A send-only packet socket.
struct Socket(OwnedFd);

impl Socket {
    fn open() -> Result<Self> {
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
        // SAFETY: a descriptor just opened and owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, t: &Target, op: u16) -> io::Result<()> {
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = 0x0806u16.to_be();
        addr.sll_ifindex = t.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let f = frame(&t.mac, t.ip, op);
        let rc = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Three rounds of both forms for every target; a target whose send fails is dropped
    /// from the later rounds and returned with its error.
    fn rounds(&self, targets: &[Target]) -> Vec<(Target, io::Error)> {
        let mut failed: Vec<(Target, io::Error)> = Vec::new();
        for round in 0..3 {
            if round > 0 {
                // Repeats cover a lost frame; a short gap keeps `ip associate` fast.
                thread::sleep(Duration::from_millis(2));
            }
            for t in targets {
                if failed.iter().any(|(f, _)| f == t) {
                    continue;
                }
                if let Err(e) = self.send(t, 1).and_then(|()| self.send(t, 2)) {
                    failed.push((*t, e));
                }
            }
        }
        failed
    }
}

/// Announces `ip` at `mac` out of the interface `ifindex`, now (the CLI: a process that
/// announces before it exits).
pub fn announce(ifindex: u32, mac: &[u8; 6], ip: Ipv4Addr) -> Result<()> {
    crate::failpoint::pause("garp");
    let socket = Socket::open()?;
    let target = Target {
        ifindex,
        mac: *mac,
        ip,
    };
    let failed = socket.rounds(&[target]);
    close_in_background(socket.0.into_raw_fd());
    match failed.into_iter().next() {
        Some((_, e)) => Err(e.into()),
        None => Ok(()),
    }
}

/// Announcements made by a thread of their own (the agent's): [`Announcer::announce`] only
/// queues, so an API answer does not wait for the rounds (the mapping works before the first
/// frame); a target queued again before its turn is announced once, so a burst of moves of
/// one address costs one announcement. The thread keeps one socket open, so no announcement
/// pays a socket's slow close.
pub struct Announcer {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Target>,
    /// The thread is between taking work and having sent it.
    busy: bool,
    stopping: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, socket: Socket) {
        let mut q = self.lock();
        loop {
            while q.pending.is_empty() && !q.stopping {
                q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.pending.is_empty() {
                return;
            }
            q.busy = true;
            drop(q);
            crate::failpoint::pause("garp");
            // Taken only now: whatever was queued meanwhile goes out in these rounds.
            let batch = std::mem::take(&mut self.lock().pending);
            for (t, e) in socket.rounds(&batch) {
                eprintln!("floatip: warning: gratuitous ARP for {} failed: {e}", t.ip);
            }
            q = self.lock();
            q.busy = false;
            self.changed.notify_all();
        }
    }
}

impl Announcer {
    /// Opens the socket (in the caller's network namespace) and starts the thread.
    pub fn start() -> Result<Self> {
        let socket = Socket::open()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let worker = shared.clone();
        thread::Builder::new()
            .name("floatip-garp".into())
            .spawn(move || worker.run(socket))?;
        Ok(Self { shared })
    }

    /// Queues an announcement; returns at once.
    pub fn announce(&self, target: Target) {
        let mut q = self.shared.lock();
        if !q.pending.contains(&target) {
            q.pending.push(target);
        }
        self.shared.changed.notify_all();
    }

    /// Waits until everything queued so far has been sent.
    pub fn flush(&self) {
        let mut q = self.shared.lock();
        while !q.pending.is_empty() || q.busy {
            q = self
                .shared
                .changed
                .wait(q)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Announcer {
    /// The thread sends what is queued, then ends.
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_all();
    }
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
