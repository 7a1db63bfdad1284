//! What sockets see through a gateway: a TCP transfer across the smaller
//! route MTU (path MTU discovery), EMSGSIZE on a connected UDP socket that
//! sends too big with DF, ECONNREFUSED from a closed port, EHOSTUNREACH
//! from a connect() to an unreachable destination; each both ways; and
//! EHOSTUNREACH from a connect() to a floating IP whose instance is down
//! (its neighbour entry never resolves). The outcomes of the oracle and of
//! floatip must be the same.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    cases::Dir,
    gateway::{EXT, FIP1, FIP3, FIP4, Gateway, UNREACHABLE_AT_GW},
    socket::{in_namespace, setopt},
};
use crate::netns::{host_command, run as run_cmd};

/// One socket check's outcome at one gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub dir: Dir,
    pub outcome: String,
}

fn flush_route_caches(gw: &Gateway) {
    for ns in [&gw.lab.inst1, &gw.lab.ext] {
        let _ = run_cmd(
            host_command(&["ip", "-n", ns, "route", "flush", "cache"]),
            crate::netns::EXEC_TIMEOUT,
        );
    }
}

const TRANSFER: &str = "262144";

/// netprobe tcp-send of 256 KiB from `client` to `server` (echoed back).
fn tcp_transfer(gw: &Gateway, server_ns: &str, client_ns: &str, addr: Ipv4Addr) -> String {
    let port = "7070";
    let Ok(mut server) = gw.lab.server(server_ns, &["tcp-serve", port]) else {
        return "server did not start".into();
    };
    let bin = gw.lab.netprobe_bin.to_string_lossy().into_owned();
    // The watchdog bounds a stalled transfer (a PMTU black hole never ends).
    let mut cmd = crate::netns::ns_command(
        client_ns,
        &[&bin, "tcp-send", &addr.to_string(), port, TRANSFER, "7"],
    );
    cmd.env("NETPROBE_TIMEOUT", "10");
    let out = run_cmd(cmd, Duration::from_secs(30));
    server.signal(libc::SIGKILL);
    if out.success() {
        format!("{TRANSFER} bytes echoed")
    } else {
        "transfer failed (stalled)".into()
    }
}

/// A connected UDP socket with DF sends 1450 bytes (more than the route
/// MTU at the gateway) to `dst`: the gateway's "fragmentation needed" must
/// reach the socket, which then reports EMSGSIZE.
fn udp_emsgsize(ns: &str, dst: Ipv4Addr) -> String {
    in_namespace(ns, || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        setopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?;
        s.connect(SocketAddrV4::new(dst, 9))?;
        s.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 1450];
        while Instant::now() < deadline {
            match s.send(&buf) {
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return Ok("EMSGSIZE".into()),
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(100));
            if let Err(e) = s.recv(&mut buf)
                && e.raw_os_error() == Some(libc::EMSGSIZE)
            {
                return Ok("EMSGSIZE".into());
            }
        }
        Ok("no EMSGSIZE within 3 s".into())
    })
    .unwrap_or_else(|e| format!("error: {e:#}"))
}

/// connect() to `dst`:80, which the gateway cannot reach: the gateway's
/// ICMP unreachable must reach the socket.
fn tcp_connect(ns: &str, dst: Ipv4Addr) -> String {
    in_namespace(ns, || {
        let r = TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(dst, 80)),
            Duration::from_secs(4),
        );
        Ok(match r {
            Ok(_) => "connected".into(),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => "no error within 4 s".into(),
            Err(e) => match e.raw_os_error() {
                Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".into(),
                Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
                Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
                _ => format!("{e}"),
            },
        })
    })
    .unwrap_or_else(|e| format!("error: {e:#}"))
}

/// A connected UDP socket sends to a closed port: ECONNREFUSED.
fn udp_refused(gw: &Gateway, ns: &str, dst: Ipv4Addr) -> String {
    let out = gw.lab.netprobe(ns, &["udp-refused", &dst.to_string(), "9"]);
    if out.success() {
        "ECONNREFUSED".into()
    } else {
        "no ECONNREFUSED".into()
    }
}

/// Runs every check through `gw`.
pub fn run(gw: &Gateway) -> Result<Vec<Check>> {
    let l = &gw.lab;
    let mut v = Vec::new();
    let mut check = |name, dir, f: &dyn Fn() -> String| {
        flush_route_caches(gw);
        v.push(Check {
            name,
            dir,
            outcome: f(),
        });
    };
    check("tcp-transfer-pmtu", Dir::Out, &|| {
        tcp_transfer(gw, &l.ext, &l.inst1, EXT)
    });
    check("tcp-transfer-pmtu", Dir::In, &|| {
        tcp_transfer(gw, &l.inst1, &l.ext, FIP1)
    });
    check("udp-emsgsize", Dir::Out, &|| udp_emsgsize(&l.inst1, EXT));
    check("udp-emsgsize", Dir::In, &|| udp_emsgsize(&l.ext, FIP1));
    check("tcp-connect-unreachable", Dir::Out, &|| {
        tcp_connect(&l.inst1, UNREACHABLE_AT_GW)
    });
    check("tcp-connect-unreachable", Dir::In, &|| {
        tcp_connect(&l.ext, FIP3)
    });
    check("tcp-connect-instance-down", Dir::In, &|| {
        tcp_connect(&l.ext, FIP4)
    });
    check("udp-refused", Dir::Out, &|| udp_refused(gw, &l.inst1, EXT));
    check("udp-refused", Dir::In, &|| udp_refused(gw, &l.ext, FIP1));
    flush_route_caches(gw);
    Ok(v)
}

/// The checks whose outcomes differ: (name, dir, oracle, floatip).
pub fn compare(oracle: &[Check], got: &[Check]) -> Vec<(Check, String)> {
    oracle
        .iter()
        .zip(got)
        .filter(|(a, b)| a.outcome != b.outcome)
        .map(|(a, b)| (a.clone(), b.outcome.clone()))
        .collect()
}
