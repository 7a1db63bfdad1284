//! `cargo xtask demo`: the life of a floating IP, as a tutorial transcript.
//!
//! Builds the namespace topology of `tests::netns` (an external client, a
//! router, the gateway, two instances on a tenant network), attaches floatip
//! to the gateway in native XDP mode and walks through pool creation,
//! allocation, association, traffic in both directions, counters,
//! disassociation and release. Every `floatip` command is printed as
//! `$ floatip ...` followed by its output; commands run on the other hosts are
//! printed as `[host]$ ...`. Everything is torn down at the end, also on
//! failure and on Ctrl-C (SIGINT/SIGTERM set a flag; the walk-through stops
//! after the current command and the topology's guard removes namespaces,
//! links and pins). Exits non-zero on any failure (130 when interrupted).
//!
//! The same binary carries the small traffic helpers the walk-through runs
//! inside the namespaces (`demo http-serve`, `demo http-get`, ...), so the
//! demo needs no curl or python on the machine. The control-plane tests use
//! them too (`trickle-send`/`trickle-recv`).
//!
//! `FLOATIP_BIN` overrides where `floatip` is looked up (default: next to
//! this binary). `DEMO_PAUSE_ON_FAILURE=SECS` keeps the lab that long after a
//! failed step, for a look inside (Ctrl-C ends the pause).
//!
//! ```text
//! demo [--mode xdp|xdp-generic|tc]  run the walk-through (default: native XDP)
//! demo http-serve PORT NAME         answer every HTTP request with "hello from NAME ..."
//! demo http-get URL                 GET http://IP[:PORT]/PATH, print the body (like curl -s)
//! demo tcp-listen PORT              accept one connection, print its peer and what it sent
//! demo tcp-send IP PORT MESSAGE     connect, send MESSAGE, close
//! demo trickle-send IP PORT         connect, then send "seq=N sent_ns=T" lines every 50 ms
//! demo trickle-recv PORT            accept one connection, print "recv LINE" per line received
//! ```

use std::{
    env,
    io::{self, BufRead, BufReader, ErrorKind, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tests::{
    agent,
    netns::{self, EXT_IP, INST1_IP, INST2_IP, Lab, Mode, Output, Spawned},
};

// ---------------------------------------------------------------- signals

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    // From now on, ignore further Ctrl-C: the disposition is inherited by the
    // teardown's commands, so a second Ctrl-C cannot cut the cleanup short.
    // SAFETY: signal() is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls signal().
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

// ---------------------------------------------------------------- main

const HELPERS: &[&str] = &[
    "http-serve",
    "http-get",
    "tcp-listen",
    "tcp-send",
    "trickle-send",
    "trickle-recv",
];

const USAGE: &str = "\
usage: demo [--mode xdp|xdp-generic|tc]   run the floatip walk-through (as root; `cargo xtask demo`)
       demo HELPER ARGS...               a traffic helper, run inside the namespaces:
            http-serve PORT NAME | http-get URL | tcp-listen PORT | tcp-send IP PORT MESSAGE |
            trickle-send IP PORT | trickle-recv PORT";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    if let Some(cmd) = args.first().filter(|a| HELPERS.contains(&a.as_str())) {
        return probe::main(cmd, &args[1..]);
    }
    let mode = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] | ["--mode", "xdp"] => Mode::Xdp,
        ["--mode", "xdp-generic"] => Mode::XdpGeneric,
        ["--mode", "tc"] => Mode::Tc,
        ["-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };

    // Not alongside the namespace tests (they share this lock). Taken before the
    // handlers are installed, so Ctrl-C while waiting for it just ends the demo.
    let serial = netns::serialize();
    install_signal_handlers();
    let result = walkthrough(mode);
    drop(serial);
    // The lab (namespaces, links, pins, state) is gone by now: it lived in `walkthrough`.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if interrupted() => {
            eprintln!("\n# Interrupted: everything the demo created has been removed.");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            eprintln!("# Everything the demo created has been removed.");
            ExitCode::FAILURE
        }
    }
}

/// `$FLOATIP_BIN`, else `floatip` next to this binary (target/release/floatip).
fn floatip_binary() -> PathBuf {
    if let Some(p) = env::var_os("FLOATIP_BIN") {
        return PathBuf::from(p);
    }
    let exe = env::current_exe().unwrap_or_default();
    exe.parent()
        .unwrap_or(Path::new("target/release"))
        .join("floatip")
}

// ---------------------------------------------------------------- transcript

/// The walk-through's view of the lab: runs and prints commands.
struct Demo {
    lab: Lab,
    /// This binary: the traffic helpers.
    me: PathBuf,
}

fn say(text: &str) {
    for line in text.lines() {
        if line.is_empty() {
            println!("#");
        } else {
            println!("# {line}");
        }
    }
    let _ = io::stdout().flush();
}

fn blank() {
    println!();
}

fn show_output(out: &Output) {
    show_text(out);
    println!();
    let _ = io::stdout().flush();
}

fn show_text(out: &Output) {
    // floatip reports problems (and map repairs) on stderr: part of the story.
    for text in [&out.stdout, &out.stderr] {
        let text = text.trim_end();
        if !text.is_empty() {
            println!("{text}");
        }
    }
    let _ = io::stdout().flush();
}

impl Demo {
    /// `floatip ARGS...` in the gateway namespace; the pins and database
    /// come from FLOATIP_BPFFS/FLOATIP_STATE, so the printed command is what
    /// an operator types.
    fn floatip_quiet(&self, args: &[&str]) -> Output {
        let mut cmd = netns::ns_command(&self.lab.gw, &[&self.lab.floatip_bin.to_string_lossy()]);
        cmd.args(args)
            .env("FLOATIP_BPFFS", &self.lab.bpffs)
            .env("FLOATIP_STATE", &self.lab.state);
        netns::run(cmd, netns::EXEC_TIMEOUT)
    }

    /// Prints `$ floatip ARGS`, runs it, prints its output; fails unless it succeeded.
    fn floatip(&self, args: &[&str]) -> Result<Output> {
        println!("$ floatip {}", shell_words(args));
        let out = self.floatip_quiet(args);
        show_output(&out);
        check_interrupt()?;
        ensure!(out.success(), "`floatip {}` failed", args.join(" "));
        Ok(out)
    }

    /// Prints `$ floatip ARGS`, runs it, prints its output and exit status; fails unless it
    /// failed as a user's mistake does: one line on stderr, a non-zero exit.
    fn floatip_fails(&self, args: &[&str]) -> Result<Output> {
        println!("$ floatip {}", shell_words(args));
        let out = self.floatip_quiet(args);
        show_text(&out);
        let code = out.status.and_then(|s| s.code());
        println!(
            "(exit status {})\n",
            code.map_or("-".to_owned(), |c| c.to_string())
        );
        check_interrupt()?;
        ensure!(
            !out.success() && code.is_some() && out.stderr.trim().lines().count() == 1,
            "`floatip {}` should have failed with one line:\n{out}",
            args.join(" ")
        );
        Ok(out)
    }

    /// Prints `[host]$ ARGV`, runs it in `ns`, prints its output.
    fn host(&self, host: &str, ns: &str, argv: &[&str]) -> Result<Output> {
        println!("[{host}]$ {}", shell_words(argv));
        let out = netns::run(
            netns::ns_command(ns, &self.resolve(argv)),
            netns::EXEC_TIMEOUT,
        );
        show_output(&out);
        check_interrupt()?;
        Ok(out)
    }

    /// Like [`Self::host`], and fails unless the command succeeded.
    fn host_ok(&self, host: &str, ns: &str, argv: &[&str]) -> Result<Output> {
        let out = self.host(host, ns, argv)?;
        ensure!(out.success(), "`{}` on {host} failed", argv.join(" "));
        Ok(out)
    }

    /// Starts a helper server in the background (printed as `[host]$ ... &`)
    /// and waits until it is listening.
    fn background(&self, host: &str, ns: &str, argv: &[&str]) -> Result<Spawned> {
        println!("[{host}]$ {} &", shell_words(argv));
        let _ = io::stdout().flush();
        let mut s = netns::spawn(ns, &self.resolve(argv))?;
        s.wait_for("listening", Duration::from_secs(10))?;
        check_interrupt()?;
        Ok(s)
    }

    /// `demo ...` runs this very binary.
    fn resolve<'a>(&'a self, argv: &[&'a str]) -> Vec<&'a str> {
        let mut v: Vec<&str> = argv.to_vec();
        if v.first() == Some(&"demo") {
            v[0] = self.me.to_str().unwrap_or("demo");
        }
        v
    }
}

/// Joins arguments for display, quoting those with blanks.
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains([' ', '"', '\'']) {
                format!("\"{a}\"")
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The floating address in an `ip create` table (the `floating_ip_address` row).
fn created_address(out: &Output) -> Result<String> {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("floating_ip_address"))
        .map(|v| v.trim().to_string())
        .filter(|v| v.parse::<Ipv4Addr>().is_ok())
        .ok_or_else(|| {
            anyhow!(
                "no floating_ip_address in the output of ip create:\n{}",
                out.stdout
            )
        })
}

fn walkthrough(mode: Mode) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the demo must run as root: it creates network namespaces, veths and XDP programs"
    );
    let floatip = floatip_binary();
    ensure!(
        floatip.is_file(),
        "floatip not found at {} (build it: `cargo build --release -p floatip-userspace`, or set FLOATIP_BIN)",
        floatip.display()
    );
    let me = env::current_exe().context("cannot find the demo binary itself")?;

    say("floatip demo: the life of a floating IP.\n\
         \n\
         Network namespaces stand in for the machines:\n\
         \n\
         \x20 client 198.51.100.2 -- router -- 203.0.113.2 [gateway] 10.0.0.1 -- web1 10.0.0.11\n\
         \x20                                                                  \\- web2 10.0.0.12\n\
         \n\
         The floating IPs will live on the 203.0.113.0/24 segment between router and\n\
         gateway. Nothing configures them on an interface: the gateway's XDP program\n\
         answers ARP for them and rewrites addresses 1:1 (floating <-> fixed).\n\
         floatip runs on the gateway; FLOATIP_STATE and FLOATIP_BPFFS point it at this\n\
         demo's database and pins. Commands on other hosts are shown as [host]$.");
    // The lab runs netprobe for its own plumbing (XDP pass programs on the
    // gateway's peers); the walk-through's traffic comes from this binary.
    let netprobe = me.with_file_name("netprobe");
    ensure!(
        netprobe.is_file(),
        "netprobe not found at {} (build it: `cargo build --release -p tests --bins`)",
        netprobe.display()
    );
    let lab =
        Lab::build(mode, &floatip, &netprobe).context("cannot build the namespace topology")?;
    check_interrupt()?;
    let demo = Demo { lab, me };
    let result = steps(&demo);
    if let Err(e) = &result {
        if let Some(secs) = env::var("DEMO_PAUSE_ON_FAILURE")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            eprintln!(
                "demo failed: {e:#}\nDEMO_PAUSE_ON_FAILURE: keeping the lab for {secs} s (prefix {})",
                demo.lab.topology().prefix()
            );
            let deadline = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < deadline && !interrupted() {
                thread::sleep(Duration::from_millis(200));
            }
        }
        if interrupted() {
            say("\nInterrupted; tearing down.");
        } else {
            say("\nSomething went wrong; tearing down.");
        }
    }
    drop(demo); // detaches if still attached, kills helpers, deletes namespaces and directories
    result
}

fn steps(d: &Demo) -> Result<()> {
    let (ext, inst1, inst2) = (&d.lab.ext, &d.lab.inst1, &d.lab.inst2);

    blank();
    let how = match d.lab.mode {
        Mode::Xdp => "native XDP",
        Mode::XdpGeneric => "generic XDP",
        Mode::Tc => "TC",
    };
    say(&format!(
        "Load the data plane onto the gateway's NICs ({how}): gw-ext faces the\n\
         external network, gw-int the tenant network."
    ));
    d.floatip(&d.lab.attach_args(&[]))?;

    say("1. The admin creates a pool of external addresses behind gw-ext.");
    d.floatip(&[
        "pool",
        "create",
        "public",
        "--range",
        "203.0.113.10-203.0.113.20",
        "--external",
        "gw-ext",
    ])?;
    d.floatip(&["pool", "list"])?;

    say("2. Project \"demo\" allocates two floating IPs: the lowest free addresses.");
    let fip1 = created_address(&d.floatip(&["ip", "create", "public", "--project", "demo"])?)?;
    let fip2 = created_address(&d.floatip(&["ip", "create", "public", "--project", "demo"])?)?;
    d.floatip(&["ip", "list"])?;

    say("3. Associate them with the instances' fixed IPs.");
    d.floatip(&["ip", "associate", &fip1, INST1_IP, "--instance", "web1"])?;
    d.floatip(&["ip", "associate", &fip2, INST2_IP, "--instance", "web2"])?;
    d.floatip(&["ip", "list"])?;

    say(
        "4. Each instance runs a tiny web server (built into this demo binary) that\nanswers with its name and the address it sees the client at.",
    );
    let _web1 = d.background("web1", inst1, &["demo", "http-serve", "80", "web1"])?;
    let _web2 = d.background("web2", inst2, &["demo", "http-serve", "80", "web2"])?;
    blank();
    say(
        "The external client reaches each instance through its floating IP. The\ninstance sees the client's real address: no second NAT, no proxy.",
    );
    for (fip, name) in [(&fip1, "web1"), (&fip2, "web2")] {
        d.host_ok(
            "client",
            ext,
            &["ping", "-c", "3", "-i", "0.2", "-W", "2", fip],
        )?;
        let url = format!("http://{fip}/");
        let out = d.host_ok("client", ext, &["demo", "http-get", &url])?;
        ensure!(
            out.stdout.contains(&format!("hello from {name}"))
                && out.stdout.contains(&format!("you are {EXT_IP}:")),
            "unexpected answer from {url}: {}",
            out.stdout
        );
    }

    say(
        "5. A connection an instance opens leaves through its floating IP: the client\nsees 203.0.113.x, never the tenant address.",
    );
    let listener = d.background("client", ext, &["demo", "tcp-listen", "9000"])?;
    d.host_ok(
        "web1",
        inst1,
        &["demo", "tcp-send", EXT_IP, "9000", "hello from web1"],
    )?;
    let heard = listener.finish(Duration::from_secs(10));
    say("The client's listener printed:");
    let printed: Vec<&str> = heard
        .stdout
        .lines()
        .filter(|l| !l.starts_with("listening"))
        .collect();
    println!("{}\n", printed.join("\n"));
    ensure!(heard.success(), "the client's listener failed:\n{heard}");
    ensure!(
        heard.stdout.contains(&format!("connection from {fip1}:")),
        "the client should see web1's connection from {fip1}: {}",
        heard.stdout
    );

    say("6. Counters, kept by the XDP programs: per address, and per outcome.");
    d.floatip(&["nat", "stats"])?;
    d.floatip(&["status"])?;

    say(&format!(
        "7. Disassociate {fip2}: from the next packet on, it leads nowhere."
    ));
    d.floatip(&["ip", "disassociate", &fip2])?;
    let out = d.host(
        "client",
        ext,
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", &fip2],
    )?;
    ensure!(
        !out.success() && out.stdout.contains("100% packet loss"),
        "ping to the disassociated {fip2} should get no reply"
    );
    say(&format!("No reply, as expected. {fip1} is unaffected:"));
    d.host_ok("client", ext, &["ping", "-c", "1", "-W", "2", &fip1])?;

    say(&format!(
        "8. Move {fip1} from web1 to web2. Without --force that is refused, in one\n\
         line, and nothing changes:"
    ));
    let move_args = ["ip", "associate", &fip1, INST2_IP, "--instance", "web2"];
    d.floatip_fails(&move_args)?;
    say(
        "With --force it moves: the maps change in one update, so the very next packet\nto it reaches web2.",
    );
    d.floatip(&[&move_args[..], &["--force"]].concat())?;
    let url = format!("http://{fip1}/");
    let out = d.host_ok("client", ext, &["demo", "http-get", &url])?;
    ensure!(
        out.stdout.contains("hello from web2"),
        "after the move, {url} should answer from web2: {}",
        out.stdout
    );

    say(&format!(
        "9. Delete {fip2}: it goes back to the pool (free 9 -> 10)."
    ));
    d.floatip(&["ip", "delete", &fip2])?;
    let out = d.floatip(&["pool", "show", "public"])?;
    ensure!(
        out.stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["free", "10"])),
        "pool public should have 10 free addresses again"
    );
    d.floatip(&["ip", "list"])?;

    openstack_part(d, &fip1)?;

    say("Tear down: unload the data plane, then delete the namespaces.");
    d.floatip(&["detach"])?;
    say("Done.");
    Ok(())
}

/// Part 10: the same life cycle through `floatip agent` and the unmodified `openstack` CLI;
/// web1's fixed IP is free again since its floating IP moved to web2.
fn openstack_part(d: &Demo, fip1: &str) -> Result<()> {
    let bin = agent::openstack_bin();
    if !bin.is_file() {
        say(&format!(
            "10. (skipped: no openstack CLI at {}; `cargo xtask setup` installs it)",
            bin.display()
        ));
        return Ok(());
    }
    say(
        "10. The gateway agent serves the same state through a Neutron-compatible API.\n\
         A member of project demo gets a user (password on stdin); the agent listens on\n\
         the gateway's loopback, and the openstack CLI talks to it with http_basic auth.",
    );
    println!("$ echo ******** | floatip user create alice --project demo --role member");
    agent::user_create(&d.lab, "alice", "demo", "member", "alice-pw")?;
    println!("$ floatip agent &");
    let _agent = agent::start(&d.lab, &[])?;
    let clouds = agent::clouds_yaml(&d.lab.workdir, &[("alice", "alice-pw")])?;
    let env = format!("OS_CLIENT_CONFIG_FILE={}", clouds.display());
    let bin = bin.to_string_lossy().into_owned();
    let os = |args: &[&str]| -> Result<Output> {
        println!("$ openstack --os-cloud alice {}", shell_words(args));
        let mut argv = vec!["env", env.as_str(), bin.as_str(), "--os-cloud", "alice"];
        argv.extend_from_slice(args);
        let out = netns::run(netns::ns_command(&d.lab.gw, &argv), netns::EXEC_TIMEOUT);
        show_output(&out);
        check_interrupt()?;
        ensure!(out.success(), "`openstack {}` failed", args.join(" "));
        Ok(out)
    };
    os(&["network", "list", "--external"])?;
    say(&format!("The CLI's {fip1} is there too: one database."));
    os(&["floating", "ip", "list"])?;
    os(&[
        "port",
        "create",
        "--network",
        "gw-int",
        "--fixed-ip",
        &format!("ip-address={INST1_IP}"),
        "web1",
        "-c",
        "id",
        "-c",
        "fixed_ips",
    ])?;
    let out = os(&[
        "floating",
        "ip",
        "create",
        "public",
        "-f",
        "value",
        "-c",
        "floating_ip_address",
    ])?;
    let fip = out.stdout.trim().to_owned();
    ensure!(
        fip.parse::<Ipv4Addr>().is_ok(),
        "no address from floating ip create: {out}"
    );
    os(&["floating", "ip", "set", "--port", "web1", &fip])?;
    os(&[
        "floating",
        "ip",
        "show",
        &fip,
        "-c",
        "floating_ip_address",
        "-c",
        "fixed_ip_address",
        "-c",
        "status",
    ])?;
    let url = format!("http://{fip}/");
    let out = d.host_ok("client", &d.lab.ext, &["demo", "http-get", &url])?;
    ensure!(
        out.stdout.contains("hello from web1"),
        "unexpected answer from {url}: {}",
        out.stdout
    );
    os(&["floating", "ip", "unset", "--port", &fip])?;
    let out = d.host(
        "client",
        &d.lab.ext,
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", &fip],
    )?;
    ensure!(
        !out.success(),
        "ping to {fip} after unset should get no reply"
    );
    os(&["floating", "ip", "delete", &fip])?;
    say("The agent can be stopped and started at any time: forwarding does not depend on it.");
    Ok(())
}

// ---------------------------------------------------------------- traffic helpers

/// The helpers run inside the namespaces. Each has a watchdog (60 s) so a
/// broken data plane fails the caller instead of hanging it; servers print
/// `listening tcp PORT` once bound.
mod probe {
    use super::*;

    const IO_TIMEOUT: Duration = Duration::from_secs(5);

    pub fn main(cmd: &str, args: &[String]) -> ExitCode {
        thread::spawn(|| {
            thread::sleep(Duration::from_secs(60));
            eprintln!(
                "demo {}: watchdog: gave up after 60 s",
                env::args().nth(1).unwrap_or_default()
            );
            std::process::exit(124);
        });
        let result = match cmd {
            "http-serve" => http_serve(args),
            "http-get" => http_get(args),
            "tcp-listen" => tcp_listen(args),
            "tcp-send" => tcp_send(args),
            "trickle-send" => trickle_send(args),
            "trickle-recv" => trickle_recv(args),
            other => Err(anyhow!("unknown command {other:?} (try --help)")),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{cmd}: {e:#}");
                ExitCode::FAILURE
            }
        }
    }

    fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T> {
        let s = args
            .get(i)
            .ok_or_else(|| anyhow!("missing argument {what}"))?;
        s.parse().map_err(|_| anyhow!("bad {what}: {s:?}"))
    }

    fn listen(port: u16) -> Result<TcpListener> {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .with_context(|| format!("bind :{port}"))?;
        println!("listening tcp {port}");
        io::stdout().flush()?;
        Ok(l)
    }

    /// Connects, retrying for 3 s while refused (the server may be starting).
    fn connect(addr: SocketAddr) -> Result<TcpStream> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                Ok(s) => {
                    s.set_read_timeout(Some(IO_TIMEOUT))?;
                    s.set_write_timeout(Some(IO_TIMEOUT))?;
                    return Ok(s);
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("connect {addr}")),
            }
        }
    }

    fn http_serve(args: &[String]) -> Result<()> {
        let port: u16 = arg(args, 0, "PORT")?;
        let name: String = arg(args, 1, "NAME")?;
        let listener = listen(port)?;
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
            let peer = conn.peer_addr()?;
            let local = conn.local_addr()?;
            // Read the request head (up to the blank line).
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let body = format!("hello from {name} ({}); you are {peer}\n", local.ip());
            let resp = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes());
            let _ = conn.shutdown(Shutdown::Write);
            let first = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            println!("{peer} \"{first}\" 200");
            let _ = io::stdout().flush();
        }
        Ok(())
    }

    fn http_get(args: &[String]) -> Result<()> {
        let url: String = arg(args, 0, "URL")?;
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("only http:// URLs: {url}"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = if hostport.contains(':') {
            hostport.parse()?
        } else {
            SocketAddr::from((
                hostport
                    .parse::<Ipv4Addr>()
                    .context("host must be an IPv4 address")?,
                80,
            ))
        };
        let mut conn = connect(addr)?;
        write!(
            conn,
            "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: floatip-demo\r\n\r\n"
        )?;
        let mut resp = Vec::new();
        conn.read_to_end(&mut resp)
            .context("reading the response")?;
        let resp = String::from_utf8_lossy(&resp);
        let (head, body) = resp
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("malformed response {resp:?}"))?;
        let status = head.lines().next().unwrap_or("");
        ensure!(
            status.split_whitespace().nth(1) == Some("200"),
            "HTTP status {status:?}"
        );
        print!("{body}");
        Ok(())
    }

    fn tcp_listen(args: &[String]) -> Result<()> {
        let port: u16 = arg(args, 0, "PORT")?;
        let listener = listen(port)?;
        let (mut conn, peer) = listener.accept()?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut msg = String::new();
        conn.read_to_string(&mut msg).context("reading")?;
        println!("connection from {peer}: {}", msg.trim_end());
        Ok(())
    }

    fn tcp_send(args: &[String]) -> Result<()> {
        let ip: Ipv4Addr = arg(args, 0, "IP")?;
        let port: u16 = arg(args, 1, "PORT")?;
        let msg: String = arg(args, 2, "MESSAGE")?;
        let mut conn = connect(SocketAddr::from((ip, port)))?;
        conn.write_all(msg.as_bytes())?;
        conn.shutdown(Shutdown::Write)?;
        // Wait for the peer to close, so the message surely arrived.
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        println!(
            "sent {} bytes from {} to {ip}:{port}",
            msg.len(),
            conn.local_addr()?
        );
        Ok(())
    }

    fn now_ns() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    }

    /// Sends a line every 50 ms until the watchdog or an error ends it. Each
    /// line carries the wall-clock time it was written (all namespaces share
    /// the clock), so the receiver's output tells when its data was sent.
    fn trickle_send(args: &[String]) -> Result<()> {
        let ip: Ipv4Addr = arg(args, 0, "IP")?;
        let port: u16 = arg(args, 1, "PORT")?;
        let mut conn = connect(SocketAddr::from((ip, port)))?;
        conn.set_nodelay(true)?;
        println!("connected local={} peer={ip}:{port}", conn.local_addr()?);
        io::stdout().flush()?;
        for seq in 0u64.. {
            let line = format!("seq={seq} sent_ns={}\n", now_ns());
            if let Err(e) = conn.write_all(line.as_bytes()) {
                bail!("write after {seq} lines: {e}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Accepts one connection and prints every line it receives as `recv LINE`.
    fn trickle_recv(args: &[String]) -> Result<()> {
        let port: u16 = arg(args, 0, "PORT")?;
        let listener = listen(port)?;
        let (conn, peer) = listener.accept()?;
        println!("accepted peer={peer}");
        io::stdout().flush()?;
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => {
                    println!("closed");
                    return Ok(());
                }
                Ok(_) => {
                    println!("recv {}", line.trim_end());
                    io::stdout().flush()?;
                }
                Err(e) => {
                    println!("error {e}");
                    return Ok(());
                }
            }
        }
    }
}
