//! Driving `floatip agent` in a [`Lab`]: the agent runs in the gateway namespace on its
//! loopback, users are made with `floatip user create`, and HTTP requests are made from a
//! thread that entered the gateway's network namespace ([`in_netns`]), so no request ever
//! leaves from the root namespace.

use std::{fs::File, io::Write, os::fd::AsRawFd, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::Value;

use crate::netns::{Lab, Output, Spawned, ns_command};

/// Where the agent listens inside the gateway namespace.
pub const LISTEN: &str = "127.0.0.1:9696";

/// The lab most agent tests start from: the topology (mode from the environment), `admin`
/// (name, password) as the `admin` project's admin, and pool `public` over `range`, attached.
#[track_caller]
pub fn lab(netprobe: &str, admin: (&str, &str), range: &str) -> Lab {
    let lab = Lab::build(
        crate::netns::mode_from_env(),
        &crate::netns::floatip_binary(),
        std::path::Path::new(netprobe),
    )
    .unwrap_or_else(|e| panic!("cannot build the lab: {e:#}"));
    user_create(&lab, admin.0, "admin", "admin", admin.1).unwrap();
    lab.pool_create("public", range);
    let out = lab.attach();
    assert!(out.success(), "attach: {out}");
    lab
}

/// `floatip user create NAME --project P --role R` with `password` on stdin, in the gateway.
pub fn user_create(
    lab: &Lab,
    name: &str,
    project: &str,
    role: &str,
    password: &str,
) -> Result<Output> {
    user_create_with(lab, &[], name, project, role, password)
}

/// [`user_create`] with global flags `extra` (e.g. `--store URL`) after the lab's.
pub fn user_create_with(
    lab: &Lab,
    extra: &[&str],
    name: &str,
    project: &str,
    role: &str,
    password: &str,
) -> Result<Output> {
    let bin = lab.floatip_bin.to_string_lossy().into_owned();
    let (bpffs, state) = (
        lab.bpffs.to_string_lossy().into_owned(),
        lab.state.to_string_lossy().into_owned(),
    );
    let mut argv = vec![bin.as_str(), "--bpffs", &bpffs, "--state", &state];
    argv.extend_from_slice(extra);
    argv.extend(["user", "create", name, "--project", project, "--role", role]);
    let mut child = ns_command(&lab.gw, &argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start floatip user create")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(format!("{password}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    let out = Output {
        cmd: argv.join(" "),
        status: Some(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        timed_out: false,
    };
    out.check()
}

/// Starts `floatip agent --listen 127.0.0.1:9696 ARGS` in the gateway namespace (with the
/// lab's state and pins) and waits until it serves. Killed when the handle drops.
pub fn start(lab: &Lab, args: &[&str]) -> Result<Spawned> {
    start_with_env(lab, &[], args)
}

/// [`start`] with environment variables `env` (`NAME=VALUE`) set for the agent.
pub fn start_with_env(lab: &Lab, env: &[&str], args: &[&str]) -> Result<Spawned> {
    let mut argv = vec!["agent", "--listen", LISTEN];
    argv.extend_from_slice(args);
    let mut wrapper = vec!["env"];
    wrapper.extend_from_slice(env);
    let mut agent = lab.floatip_spawn_via(&wrapper, &argv)?;
    agent
        .wait_for("serving the API on", Duration::from_secs(20))
        .context("the agent did not start")?;
    Ok(agent)
}

/// Runs `f` on a thread whose network namespace is `ns`'s: its sockets live there.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            let file = File::open(format!("/run/netns/{ns}")).expect("namespace file");
            // SAFETY: setns on a descriptor owned here; it switches only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {ns}: {}",
                std::io::Error::last_os_error()
            );
            f()
        });
        handle
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub www_authenticate: Option<String>,
    pub content_type: Option<String>,
}

impl Reply {
    /// The Neutron error type, if the body is a Neutron error.
    pub fn error_type(&self) -> Option<&str> {
        self.body["NeutronError"]["type"].as_str()
    }
}

/// A client of the agent's API; make it on a thread inside the gateway namespace.
pub struct Client {
    base: String,
    http: ureq::Agent,
}

impl Client {
    pub fn new() -> Self {
        Self {
            base: format!("http://{LISTEN}"),
            http: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        }
    }

    /// `METHOD path` with Basic credentials `user` (name, password) and a raw body.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        user: Option<(&str, &str)>,
        body: Option<&str>,
    ) -> Result<Reply> {
        let mut req = self.http.request(method, &format!("{}{path}", self.base));
        if let Some((u, p)) = user {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            req = req.set("Authorization", &format!("Basic {token}"));
        }
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => bail!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let www_authenticate = resp.header("www-authenticate").map(str::to_owned);
        let content_type = resp.header("content-type").map(str::to_owned);
        let text = resp.into_string()?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            body,
            text,
            www_authenticate,
            content_type,
        })
    }

    /// Like [`Self::raw`] with a JSON body; panics on transport errors (not on HTTP errors).
    #[track_caller]
    pub fn call(
        &self,
        method: &str,
        path: &str,
        user: (&str, &str),
        body: Option<&Value>,
    ) -> Reply {
        let text = body.map(Value::to_string);
        self.raw(method, path, Some(user), text.as_deref())
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The id of the network called `name` (a pool, or an internal NIC), as `user` sees it.
    #[track_caller]
    pub fn network_id(&self, user: (&str, &str), name: &str) -> String {
        let r = self.call("GET", &format!("/v2.0/networks?name={name}"), user, None);
        r.body["networks"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no network {name}: {}", r.text))
            .to_owned()
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

/// The openstack CLI in the project's virtualenv (`cargo xtask setup` installs it).
pub fn openstack_bin() -> std::path::PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    std::path::Path::new(&home).join(".local/share/floatip/venv/bin/openstack")
}

/// Writes a clouds.yaml with one cloud per user (name, password), all pointing at the
/// agent with keystoneauth's `http_basic` plugin; the identity endpoint is the agent's
/// little Keystone part, which `quota set/show PROJECT` needs to find the project.
pub fn clouds_yaml(dir: &std::path::Path, users: &[(&str, &str)]) -> Result<std::path::PathBuf> {
    let mut text = String::from("clouds:\n");
    for (user, password) in users {
        text.push_str(&format!(
            "  {user}:\n    auth_type: http_basic\n    auth:\n      endpoint: http://{LISTEN}\n      username: {user}\n      password: {password}\n    identity_endpoint_override: http://{LISTEN}/identity/v3\n"
        ));
    }
    let path = dir.join("clouds.yaml");
    std::fs::write(&path, text)?;
    Ok(path)
}
