//! `netprobe`: a small traffic tool the namespace tests run inside network
//! namespaces (`nsenter --net=/run/netns/NAME -- netprobe ...`).
//!
//! Every subcommand prints one result line on stdout, exits 0 on success and
//! non-zero with a one-line reason on stderr otherwise. Every socket has a
//! timeout and the whole process has a watchdog (`NETPROBE_TIMEOUT` seconds,
//! default 30), so a broken data plane fails a test instead of hanging it.
//!
//! ```text
//! tcp-serve PORT                  accept one connection, echo every byte back, then
//!                                 append a trailer "fnv=HEX bytes=N peer=IP:PORT";
//!                                 prints "peer=IP:PORT bytes=N fnv=HEX"
//! tcp-send ADDR PORT BYTES SEED   send BYTES deterministic bytes, check the echo and
//!                                 the trailer; prints "ok bytes=N fnv=HEX local=.. server-saw=.."
//! udp-echo PORT [COUNT]           answer COUNT (default 1) datagrams with
//!                                 "echo peer=IP:PORT data=PAYLOAD"
//! udp-ask ADDR PORT               connected socket: send a nonce, expect it echoed
//! udp-refused ADDR PORT           connected socket: send, expect ECONNREFUSED (an ICMP
//!                                 port unreachable matched to the socket) within 2 s
//! spoof SRC DST PORT COUNT        raw socket: send COUNT UDP datagrams from a forged SRC
//! udp-stream ADDR PORT RATE       send sequence-numbered datagrams, paced at RATE per
//!                                 second (bursts of at most 64), until SIGTERM; then
//!                                 three end markers carrying the total; prints
//!                                 "sent=N send_errors=E seconds=S"
//! udp-sink PORT                   receive a udp-stream (SO_RCVBUFFORCE 64 MiB, SO_RXQ_OVFL)
//!                                 until its end marker (or 5 s without datagrams);
//!                                 prints "receiving from IP:PORT" at the first datagram,
//!                                 then one line "total=.. unique=.. missing=.. ..."; with
//!                                 LOG, one line "SEQ SENT_WALL_US RECEIVED_MONOTONIC_US" each
//! tcp-ping ADDR PORT INTERVAL_MS  one long-lived connection to a tcp-serve: an 8-byte
//!                                 counter every INTERVAL_MS, each echo checked, until
//!                                 SIGTERM; prints "ok rounds=N max_round_ms=M" (a reset
//!                                 or a wrong echo fails it: the connection did not survive)
//! tcx-count IFACE                 BPF_PROG_QUERY: "ingress=N egress=M" TCX programs
//! xdp-pass IFACE                  attach a 2-instruction XDP_PASS program (native mode)
//!                                 through a bpf_link, print "attached", and hold it
//!                                 until killed (no watchdog): see `tests::netns`
//! ```
//!
//! Servers print `listening <proto> <port>` on stdout once bound, so the
//! harness can start the client without racing the bind.

use std::{
    env,
    io::{self, ErrorKind, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

/// FNV-1a, 64 bit: a tiny, dependency-free content hash.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*) from a seed.
struct Stream(u64);

impl Stream {
    fn new(seed: u64) -> Self {
        Stream((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

type Res<T> = Result<T, String>;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Res<T> {
    let s = args
        .get(i)
        .ok_or_else(|| format!("missing argument {what}"))?;
    s.parse().map_err(|_| format!("bad {what}: {s:?}"))
}

const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let limit = env::var("NETPROBE_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30u64);
    // xdp-pass runs for the lifetime of a topology; everything else is bounded.
    let bounded = args.first().map(String::as_str) != Some("xdp-pass");
    thread::spawn(move || {
        if !bounded {
            return;
        }
        thread::sleep(Duration::from_secs(limit));
        eprintln!("netprobe: watchdog: gave up after {limit} s");
        std::process::exit(124);
    });
    let result = match args.first().map(String::as_str) {
        Some("tcp-serve") => tcp_serve(&args),
        Some("tcp-send") => tcp_send(&args),
        Some("udp-echo") => udp_echo(&args),
        Some("udp-ask") => udp_ask(&args),
        Some("udp-refused") => udp_refused(&args),
        Some("spoof") => spoof(&args),
        Some("garp") => garp(&args),
        Some("udp-stream") => udp_stream(&args),
        Some("udp-sink") => udp_sink(&args),
        Some("tcp-ping") => tcp_ping(&args),
        Some("tcx-count") => tcx_count(&args),
        Some("xdp-pass") => xdp_pass(&args),
        _ => Err("usage: netprobe tcp-serve|tcp-send|udp-echo|udp-ask|udp-refused|spoof|garp|udp-stream|udp-sink|tcp-ping|tcx-count|xdp-pass ...".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ready(proto: &str, port: u16) {
    println!("listening {proto} {port}");
    let _ = io::stdout().flush();
}

fn tcp_serve(args: &[String]) -> Res<()> {
    let port: u16 = arg(args, 1, "PORT")?;
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        .map_err(|e| format!("bind :{port}: {e}"))?;
    ready("tcp", port);
    let (mut conn, peer) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut hash = Fnv::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read from {peer} after {total} bytes: {e}")),
        };
        hash.update(&buf[..n]);
        total += n as u64;
        conn.write_all(&buf[..n])
            .map_err(|e| format!("echo to {peer} after {total} bytes: {e}"))?;
    }
    let trailer = format!("fnv={:016x} bytes={total} peer={peer}\n", hash.0);
    conn.write_all(trailer.as_bytes())
        .map_err(|e| format!("trailer to {peer}: {e}"))?;
    let _ = conn.shutdown(Shutdown::Write);
    println!("peer={peer} bytes={total} fnv={:016x}", hash.0);
    Ok(())
}

/// Connects, retrying while the server is not there yet (refused) for up to 5 s.
fn connect(addr: SocketAddr) -> Res<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(format!("connect {addr}: {e}")),
        }
    }
}

fn tcp_send(args: &[String]) -> Res<()> {
    let ip: Ipv4Addr = arg(args, 1, "ADDR")?;
    let port: u16 = arg(args, 2, "PORT")?;
    let bytes: u64 = arg(args, 3, "BYTES")?;
    let seed: u64 = arg(args, 4, "SEED")?;
    let addr = SocketAddr::from((ip, port));
    let conn = connect(addr)?;
    let local = conn.local_addr().map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;

    // Write in a thread while reading the echo here: writing everything
    // first would deadlock once both directions' buffers are full.
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    let sender = thread::spawn(move || -> Res<u64> {
        let mut stream = Stream::new(seed);
        let mut hash = Fnv::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            stream.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("send after {} bytes: {e}", bytes - left))?;
            left -= n as u64;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        Ok(hash.0)
    });

    let mut reader = conn;
    let mut echo = Fnv::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while got < bytes {
        let want = (bytes - got).min(buf.len() as u64) as usize;
        match reader.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(format!(
                    "connection closed after {got} of {bytes} echoed bytes"
                ));
            }
            Ok(n) => {
                echo.update(&buf[..n]);
                got += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "reading the echo after {got} of {bytes} bytes: {e}"
                ));
            }
        }
    }
    let mut trailer = String::new();
    reader
        .read_to_string(&mut trailer)
        .map_err(|e| format!("reading the trailer: {e}"))?;
    let sent = sender
        .join()
        .map_err(|_| "sender thread panicked".to_string())??;

    if echo.0 != sent {
        return Err(format!(
            "echoed bytes differ: sent fnv={sent:016x}, echo fnv={:016x}",
            echo.0
        ));
    }
    let expect = format!("fnv={sent:016x} bytes={bytes} ");
    if !trailer.starts_with(&expect) {
        return Err(format!(
            "server saw different bytes: expected {expect:?}..., server said {:?}",
            trailer.trim()
        ));
    }
    let server_saw = trailer.trim().rsplit("peer=").next().unwrap_or("");
    println!("ok bytes={bytes} fnv={sent:016x} local={local} server-saw={server_saw}");
    Ok(())
}

fn udp_echo(args: &[String]) -> Res<()> {
    let port: u16 = arg(args, 1, "PORT")?;
    let count: u32 = if args.len() > 2 {
        arg(args, 2, "COUNT")?
    } else {
        1
    };
    let sock =
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|e| format!("bind :{port}: {e}"))?;
    ready("udp", port);
    let mut buf = [0u8; 2048];
    for _ in 0..count {
        let (n, peer) = sock.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
        let data = String::from_utf8_lossy(&buf[..n]).into_owned();
        let reply = format!("echo peer={peer} data={data}");
        sock.send_to(reply.as_bytes(), peer)
            .map_err(|e| format!("reply to {peer}: {e}"))?;
        println!("peer={peer} data={data}");
        let _ = io::stdout().flush();
    }
    Ok(())
}

fn connected_udp(ip: Ipv4Addr, port: u16) -> Res<UdpSocket> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| format!("bind: {e}"))?;
    sock.connect((ip, port))
        .map_err(|e| format!("connect {ip}:{port}: {e}"))?;
    Ok(sock)
}

fn udp_ask(args: &[String]) -> Res<()> {
    let ip: Ipv4Addr = arg(args, 1, "ADDR")?;
    let port: u16 = arg(args, 2, "PORT")?;
    let sock = connected_udp(ip, port)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let nonce = format!("ask-{}-{}", std::process::id(), now.as_nanos());
    let mut buf = [0u8; 2048];
    let mut last = String::from("no attempt");
    for _ in 0..5 {
        if let Err(e) = sock.send(nonce.as_bytes()) {
            last = format!("send: {e}");
            thread::sleep(Duration::from_millis(200));
            continue;
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                if !reply.ends_with(&format!("data={nonce}")) {
                    return Err(format!("unexpected reply {reply:?} to {nonce:?}"));
                }
                let local = sock.local_addr().map_err(|e| e.to_string())?;
                println!("ok local={local} reply={reply}");
                return Ok(());
            }
            // The server may not be bound yet; a port unreachable says so.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                last = format!("recv: {e}");
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => last = format!("recv: {e}"),
        }
    }
    Err(format!(
        "no answer from {ip}:{port} after 5 attempts (last: {last})"
    ))
}

fn udp_refused(args: &[String]) -> Res<()> {
    let ip: Ipv4Addr = arg(args, 1, "ADDR")?;
    let port: u16 = arg(args, 2, "PORT")?;
    let sock = connected_udp(ip, port)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2048];
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        if let Err(e) = sock.send(b"anyone there?") {
            if e.kind() == ErrorKind::ConnectionRefused {
                println!("refused (on send)");
                return Ok(());
            }
            outcomes.push(format!("send: {e}"));
            continue;
        }
        match sock.recv(&mut buf) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                println!("refused");
                return Ok(());
            }
            Err(e) => outcomes.push(format!("recv: {e}")),
            Ok(n) => outcomes.push(format!("got a {n}-byte answer")),
        }
    }
    Err(format!(
        "no ECONNREFUSED from {ip}:{port}: {}",
        outcomes.join("; ")
    ))
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

fn spoof(args: &[String]) -> Res<()> {
    let src: Ipv4Addr = arg(args, 1, "SRC")?;
    let dst: Ipv4Addr = arg(args, 2, "DST")?;
    let port: u16 = arg(args, 3, "PORT")?;
    let count: u32 = arg(args, 4, "COUNT")?;
    let payload = b"spoofed by netprobe";
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut pkt = vec![0u8; total];
    pkt[0] = 0x45;
    pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    pkt[8] = 64;
    pkt[9] = libc::IPPROTO_UDP as u8;
    pkt[12..16].copy_from_slice(&src.octets());
    pkt[16..20].copy_from_slice(&dst.octets());
    let ip_sum = csum_fold(csum_add(0, &pkt[..20]));
    pkt[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    pkt[20..22].copy_from_slice(&40000u16.to_be_bytes());
    pkt[22..24].copy_from_slice(&port.to_be_bytes());
    pkt[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    pkt[28..].copy_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let udp_sum = csum_fold(csum_add(csum_add(0, &pseudo), &pkt[20..]));
    pkt[26..28].copy_from_slice(&udp_sum.to_be_bytes());

    // SAFETY: plain socket syscalls on a socket this function owns.
    unsafe {
        // IPPROTO_RAW implies IP_HDRINCL: the header above goes out as written.
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            return Err(os_err("raw socket"));
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        for i in 0..count {
            let n = libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            if n < 0 {
                let e = os_err(&format!("sendto (datagram {i})"));
                libc::close(fd);
                return Err(e);
            }
            thread::sleep(Duration::from_millis(20));
        }
        libc::close(fd);
    }
    println!("sent {count} UDP datagrams {src} -> {dst}:{port}");
    Ok(())
}

/// `garp IFACE IP`: a gratuitous ARP request (sender = target = IP, from
/// IFACE's MAC) broadcast out of IFACE, as a host announces a new MAC.
fn garp(args: &[String]) -> Res<()> {
    use std::ffi::CString;
    let ifname: String = arg(args, 1, "IFACE")?;
    let ip: Ipv4Addr = arg(args, 2, "IP")?;
    let name = CString::new(ifname.clone()).map_err(|e| e.to_string())?;
    // SAFETY: plain socket and ioctl syscalls on buffers this function owns.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            return Err(os_err(&ifname));
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(os_err("packet socket"));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr) < 0 {
            libc::close(fd);
            return Err(os_err("SIOCGIFHWADDR"));
        }
        let mac: [u8; 6] = std::array::from_fn(|i| ifr.ifr_ifru.ifru_hwaddr.sa_data[i] as u8);
        let mut f = vec![0xffu8; 6];
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&mac);
        f.extend_from_slice(&ip.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&ip.octets());
        f.resize(60, 0);
        let mut sa: libc::sockaddr_ll = std::mem::zeroed();
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = ifindex as i32;
        sa.sll_halen = 6;
        sa.sll_addr[..6].fill(0xff);
        for _ in 0..3 {
            let n = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            if n < 0 {
                let e = os_err("sendto");
                libc::close(fd);
                return Err(e);
            }
            thread::sleep(Duration::from_millis(20));
        }
        libc::close(fd);
    }
    println!("announced {ip} on {ifname}");
    Ok(())
}

// ---------------------------------------------------------------- streams

/// First bytes of every udp-stream datagram: magic, then the sequence number
/// (big endian); the end marker carries `END_SEQ` and then the total sent.
const STREAM_MAGIC: &[u8; 8] = b"fipseq01";
const END_SEQ: u64 = u64::MAX;
/// Datagrams sent back to back at most, so a stalled sender catching up
/// never floods the veth queues (the stream is then slower, not burstier).
const STREAM_BURST: f64 = 64.0;

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn stream_datagram(seq: u64, extra: u64) -> [u8; 32] {
    let mut d = [0u8; 32];
    d[..8].copy_from_slice(STREAM_MAGIC);
    d[8..16].copy_from_slice(&seq.to_be_bytes());
    d[16..24].copy_from_slice(&extra.to_be_bytes());
    d
}

/// Wall-clock time in µs (the clock of `floatip follow -v`'s reports).
fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn tcp_ping(args: &[String]) -> Res<()> {
    let addr: Ipv4Addr = arg(args, 1, "ADDR")?;
    let port: u16 = arg(args, 2, "PORT")?;
    let interval: u64 = arg(args, 3, "INTERVAL_MS")?;
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t) };
    let mut conn = TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}:{port}: {e}"))?;
    // Longer than any failover: the connection is what is tested, not the wait.
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    conn.set_nodelay(true).map_err(|e| e.to_string())?;
    println!(
        "connected {}",
        conn.local_addr().map_err(|e| e.to_string())?
    );
    let _ = io::stdout().flush();
    let (mut rounds, mut worst) = (0u64, Duration::ZERO);
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        let started = Instant::now();
        conn.write_all(&rounds.to_be_bytes())
            .map_err(|e| format!("round {rounds}: send: {e}"))?;
        let mut echo = [0u8; 8];
        conn.read_exact(&mut echo)
            .map_err(|e| format!("round {rounds}: echo: {e}"))?;
        if u64::from_be_bytes(echo) != rounds {
            return Err(format!("round {rounds}: wrong echo {echo:?}"));
        }
        worst = worst.max(started.elapsed());
        rounds += 1;
        thread::sleep(Duration::from_millis(interval));
    }
    println!("ok rounds={rounds} max_round_ms={}", worst.as_millis());
    Ok(())
}

fn udp_stream(args: &[String]) -> Res<()> {
    let ip: Ipv4Addr = arg(args, 1, "ADDR")?;
    let port: u16 = arg(args, 2, "PORT")?;
    let rate: f64 = arg(args, 3, "RATE")?;
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t) };
    let sock = connected_udp(ip, port)?;
    let start = Instant::now();
    let mut last = start;
    let mut tokens = 1.0f64;
    let mut seq = 0u64;
    let mut errors = 0u64;
    let mut last_error = String::new();
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        let now = Instant::now();
        tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(STREAM_BURST);
        last = now;
        if tokens < 1.0 {
            thread::sleep(Duration::from_micros(200));
            continue;
        }
        while tokens >= 1.0 {
            // The wall-clock send time rides along, so a receiver (or a
            // capture) can tell when a lost or misrouted datagram was sent.
            match sock.send(&stream_datagram(seq, wall_us())) {
                // The same sequence number goes again: a datagram the
                // kernel refused never left, so it is not a gap.
                Err(e) => {
                    errors += 1;
                    last_error = e.to_string();
                    thread::sleep(Duration::from_millis(1));
                    break;
                }
                Ok(_) => {
                    seq += 1;
                    tokens -= 1.0;
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(20));
        let _ = sock.send(&stream_datagram(END_SEQ, seq));
    }
    println!(
        "sent={seq} send_errors={errors} seconds={secs:.2} last_error={:?}",
        last_error
    );
    Ok(())
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> Res<()> {
    // SAFETY: `v` outlives the call; the size passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(os_err(&format!("setsockopt {level}/{name}")));
    }
    Ok(())
}

/// What a udp-sink has seen so far.
#[derive(Default)]
struct Sink {
    seen: Vec<u64>,
    datagrams: u64,
    unique: u64,
    duplicates: u64,
    /// Datagrams that arrived after one with a higher sequence number.
    reordered: u64,
    max_seq: Option<u64>,
    /// Total the sender announced in its end marker.
    announced: Option<u64>,
    foreign: u64,
    /// The socket's drop counter (SO_RXQ_OVFL), as last reported.
    rxq_ovfl: u32,
}

impl Sink {
    fn record(&mut self, seq: u64) {
        self.datagrams += 1;
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1024, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        match self.max_seq {
            Some(m) if seq < m => self.reordered += 1,
            _ => self.max_seq = Some(seq),
        }
    }

    fn seen(&self, seq: u64) -> bool {
        self.seen
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// Missing sequence numbers below the total: their count and the first ranges.
    fn missing(&self, total: u64) -> (u64, String) {
        let (mut count, mut ranges, mut seq) = (0u64, Vec::new(), 0u64);
        while seq < total {
            if self.seen(seq) {
                seq += 1;
                continue;
            }
            let from = seq;
            while seq < total && !self.seen(seq) {
                seq += 1;
            }
            count += seq - from;
            if ranges.len() < 10 {
                ranges.push(format!("{from}-{}", seq - 1));
            }
        }
        (count, ranges.join(","))
    }
}

/// CLOCK_MONOTONIC in µs.
fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for the kernel to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

fn udp_sink(args: &[String]) -> Res<()> {
    use std::os::fd::AsRawFd;
    let port: u16 = arg(args, 1, "PORT")?;
    // Optional: a file that gets "SEQ SENT_US" for every datagram received.
    let mut log = match args.get(2) {
        Some(path) => Some(io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?,
        )),
        None => None,
    };
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t) };
    let sock =
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|e| format!("bind :{port}: {e}"))?;
    let fd = sock.as_raw_fd();
    // A receive buffer far beyond what a stall of the receiver can fill,
    // and the kernel's count of what the socket dropped anyway.
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let mut rcvbuf: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `rcvbuf` and `len` are valid for the kernel to write.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut rcvbuf as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    println!("listening udp {port} rcvbuf={rcvbuf}");
    let _ = io::stdout().flush();

    let mut sink = Sink::default();
    let mut buf = [0u8; 2048];
    let mut cbuf = [0u64; 16];
    let mut peer: Option<SocketAddr> = None;
    let mut last_datagram = Instant::now();
    let idle = Duration::from_secs(5);
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: zeroed C structs filled in below.
        let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        // SAFETY: every pointer in `msg` refers to a live buffer of the stated size.
        let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted => {
                    if peer.is_some() && last_datagram.elapsed() >= idle {
                        break;
                    }
                    continue;
                }
                _ => return Err(format!("recvmsg: {e}")),
            }
        }
        // SAFETY: the kernel filled `msg`'s control buffer; the CMSG_*
        // macros walk exactly the length it reported.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                    sink.rxq_ovfl = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u32>());
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let d = &buf[..n as usize];
        if d.len() < 24 || &d[..8] != STREAM_MAGIC {
            sink.foreign += 1;
            continue;
        }
        last_datagram = Instant::now();
        if peer.is_none() {
            let p = SocketAddr::from((
                Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
                u16::from_be(from.sin_port),
            ));
            peer = Some(p);
            println!("receiving from {p}");
            let _ = io::stdout().flush();
        }
        let seq = u64::from_be_bytes(d[8..16].try_into().unwrap_or_default());
        if seq == END_SEQ {
            sink.announced = Some(u64::from_be_bytes(d[16..24].try_into().unwrap_or_default()));
            break;
        }
        if let Some(log) = log.as_mut() {
            let sent = u64::from_be_bytes(d[16..24].try_into().unwrap_or_default());
            // The receive time too, on the monotonic clock: outages are measured by it (the
            // wall clock can be stepped while a stream runs).
            let _ = writeln!(log, "{seq} {sent} {}", mono_us());
        }
        sink.record(seq);
    }
    if let Some(mut log) = log {
        log.flush().map_err(|e| format!("stream log: {e}"))?;
    }
    let total = sink
        .announced
        .unwrap_or_else(|| sink.max_seq.map_or(0, |m| m + 1));
    let (missing, ranges) = sink.missing(total);
    println!(
        "total={total} end_marker={} datagrams={} unique={} missing={missing} duplicates={} reordered={} \
         rxq_ovfl={} rcvbuf={rcvbuf} foreign={} peer={} missing_ranges={}",
        sink.announced.is_some(),
        sink.datagrams,
        sink.unique,
        sink.duplicates,
        sink.reordered,
        sink.rxq_ovfl,
        sink.foreign,
        peer.map_or("-".to_string(), |p| p.to_string()),
        if ranges.is_empty() { "-" } else { &ranges },
    );
    Ok(())
}

/// `union bpf_attr` as BPF_PROG_QUERY reads it.
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

fn tcx_count(args: &[String]) -> Res<()> {
    let name: String = arg(args, 1, "IFACE")?;
    let cname = std::ffi::CString::new(name.clone()).map_err(|e| e.to_string())?;
    // SAFETY: NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(os_err(&format!("no interface {name}")));
    }
    let mut counts = Vec::new();
    for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
        let mut q = ProgQuery {
            target_ifindex: ifindex,
            attach_type,
            ..Default::default()
        };
        // SAFETY: `q` is a valid, zero-padded bpf_attr prefix of the size passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut q as *mut ProgQuery,
                std::mem::size_of::<ProgQuery>() as libc::c_uint,
            )
        };
        if rc < 0 {
            return Err(os_err(&format!("BPF_PROG_QUERY {name} type {attach_type}")));
        }
        counts.push(q.prog_cnt);
    }
    println!("ingress={} egress={}", counts[0], counts[1]);
    Ok(())
}

/// `union bpf_attr` as BPF_PROG_LOAD reads it (up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` as BPF_LINK_CREATE reads it for XDP.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> libc::c_long {
    // SAFETY: `attr` is a zero-initialised bpf_attr prefix of the size passed.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    }
}

fn xdp_pass(args: &[String]) -> Res<()> {
    let name: String = arg(args, 1, "IFACE")?;
    let cname = std::ffi::CString::new(name.clone()).map_err(|e| e.to_string())?;
    // SAFETY: NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(os_err(&format!("no interface {name}")));
    }
    // r0 = XDP_PASS (2); exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_XDP,
        ..Default::default()
    };
    load.prog_name[..9].copy_from_slice(b"xdp_pass\0");
    let prog_fd = sys_bpf(BPF_PROG_LOAD, &mut load);
    if prog_fd < 0 {
        return Err(os_err("BPF_PROG_LOAD"));
    }
    let mut link = LinkCreate {
        prog_fd: prog_fd as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
        ..Default::default()
    };
    if sys_bpf(BPF_LINK_CREATE, &mut link) < 0 {
        return Err(os_err(&format!("attaching XDP_PASS to {name}")));
    }
    println!("attached xdp-pass to {name}");
    let _ = io::stdout().flush();
    // The link lives as long as its descriptor, i.e. this process.
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}
