//! The agent's configuration: `/etc/floatip/agent.toml` (or `--config`), overridden by flags.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;

use crate::{control::TenantGateway, dataplane::Mode, store::StoreSpec};

pub const DEFAULT_CONFIG: &str = "/etc/floatip/agent.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9696";

/// `floatip agent` flags; each overrides the file's setting.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Configuration file; a missing file is an error only when given explicitly.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the API [default: 127.0.0.1:9696].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Serve /metrics on this address instead of the API's.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (passwords then cross the network in clear).
    #[arg(long)]
    pub allow_insecure: bool,
    /// Attach the data plane at start to these external NICs (with --internal).
    #[arg(long, value_name = "IFACE")]
    pub external: Vec<String>,
    /// Internal NICs to attach at start.
    #[arg(long, value_name = "IFACE")]
    pub internal: Vec<String>,
    /// Mode of the attach at start: xdp, xdp-generic or tc [default: xdp].
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Do not run the next-hop follower (every packet then asks the FIB).
    #[arg(long)]
    pub no_follow: bool,
    /// Size of the maps the attach at start creates (as `floatip attach --max-associations`).
    #[arg(long, value_name = "N")]
    pub max_associations: Option<u32>,
    /// Join the gateway group in etcd under this name: apply every association the group
    /// stores, and answer for the pools this gateway is elected to own (needs an etcd store).
    #[arg(long, value_name = "NAME")]
    pub gateway: Option<String>,
    /// Seconds of the gateway's etcd lease: how long a dead gateway's pools wait for a new
    /// owner [default: 2].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=60))]
    pub lease_ttl: Option<u64>,
    /// A tenant-side gateway address held by whichever gateway owns POOL (repeatable).
    #[arg(long, value_name = "POOL=ADDRESS/LEN@IFACE")]
    pub tenant_gateway: Vec<TenantGateway>,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    [Mode::Xdp, Mode::XdpGeneric, Mode::Tc]
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| format!("mode '{s}' is none of xdp, xdp-generic, tc"))
}

/// The file's layout; every key is optional and unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    state: Option<PathBuf>,
    /// `etcd://HOST:PORT[,...]` or a SQLite path; wins over `state`.
    store: Option<String>,
    bpffs: Option<PathBuf>,
    allow_insecure: Option<bool>,
    max_body_bytes: Option<usize>,
    tls: Option<TlsFile>,
    dataplane: Option<DataplaneFile>,
    auth: Option<AuthFile>,
    group: Option<GroupFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    gateway: Option<String>,
    lease_ttl: Option<u64>,
    /// `POOL=ADDRESS/LEN@IFACE`, as `--tenant-gateway`.
    #[serde(default)]
    tenant_gateways: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataplaneFile {
    #[serde(default)]
    external: Vec<String>,
    #[serde(default)]
    internal: Vec<String>,
    mode: Option<String>,
    /// Run the next-hop follower (default true).
    follow: Option<bool>,
    max_associations: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    max_failures: Option<u32>,
    lockout_seconds: Option<u64>,
}

/// What the agent runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    /// Where the state lives: `--store`, else `--state`, else the file's `store`, else its
    /// `state`, else the default SQLite path.
    pub store: StoreSpec,
    pub bpffs: PathBuf,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Interfaces to attach at start; empty: use whatever is attached.
    pub external: Vec<String>,
    pub internal: Vec<String>,
    pub mode: Mode,
    /// Map size of the attach at start (`None`: attach's default).
    pub max_associations: Option<u32>,
    /// Run the next-hop follower in the agent.
    pub follow: bool,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Failed logins from one client address before it is refused for `lockout_seconds`.
    pub max_failures: u32,
    pub lockout_seconds: u64,
    /// The gateway group this agent is one of; `None`: the only gateway.
    pub group: Option<GroupConfig>,
}

/// A gateway's place in the group (see `agent::group`).
#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub gateway: String,
    pub lease_ttl: std::time::Duration,
    pub tenant: Vec<TenantGateway>,
}

impl Config {
    /// Reads the file and applies the flags; `store`, `state` and `bpffs` are the global flags
    /// when the user gave them (`None`: the file's, else their defaults
    /// `default_state`/`default_bpffs`).
    pub fn load(
        args: &AgentArgs,
        store: Option<&str>,
        state: Option<&Path>,
        bpffs: Option<&Path>,
        defaults: (&Path, &Path),
    ) -> Result<Self> {
        let path = args.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into());
        let file: File = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.config.is_none() => {
                File::default()
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let dp = file.dataplane.unwrap_or_default();
        let mode = match (args.mode, dp.mode.as_deref()) {
            (Some(m), _) => m,
            (None, Some(s)) => {
                parse_mode(s).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            (None, None) => Mode::Xdp,
        };
        let pick = |flag: &Vec<String>, file: Vec<String>| {
            if flag.is_empty() { file } else { flag.clone() }
        };
        let auth = file.auth.unwrap_or_default();
        let group_file = file.group.unwrap_or_default();
        let mut tenant = args.tenant_gateway.clone();
        if tenant.is_empty() {
            for t in &group_file.tenant_gateways {
                tenant.push(
                    t.parse()
                        .map_err(|e| anyhow::anyhow!("{}: group: {e}", path.display()))?,
                );
            }
        }
        let lease_ttl = args.lease_ttl.or(group_file.lease_ttl).unwrap_or(2);
        if !(1..=60).contains(&lease_ttl) {
            bail!(
                "{}: group: lease_ttl {lease_ttl} is not 1..=60 seconds",
                path.display()
            );
        }
        let group = args
            .gateway
            .clone()
            .or(group_file.gateway)
            .map(|gateway| GroupConfig {
                gateway,
                lease_ttl: std::time::Duration::from_secs(lease_ttl),
                tenant,
            });
        let config = Self {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid")),
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            store: match (store, state, file.store, file.state) {
                (Some(s), ..) => crate::error::invalid(StoreSpec::parse(s))?,
                (None, Some(p), ..) => StoreSpec::Sqlite(p.to_owned()),
                (None, None, Some(s), _) => StoreSpec::parse(&s)
                    .map_err(|e| anyhow::anyhow!("{}: store: {e:#}", path.display()))?,
                (None, None, None, Some(p)) => StoreSpec::Sqlite(p),
                (None, None, None, None) => StoreSpec::Sqlite(defaults.0.to_owned()),
            },
            bpffs: bpffs
                .map(Path::to_owned)
                .or(file.bpffs)
                .unwrap_or_else(|| defaults.1.to_owned()),
            tls: match (&args.tls_cert, &args.tls_key, file.tls) {
                (Some(c), Some(k), _) => Some((c.clone(), k.clone())),
                (_, _, Some(t)) => Some((t.cert, t.key)),
                _ => None,
            },
            external: pick(&args.external, dp.external),
            internal: pick(&args.internal, dp.internal),
            mode,
            max_associations: args.max_associations.or(dp.max_associations),
            follow: !args.no_follow && dp.follow.unwrap_or(true),
            max_body_bytes: file.max_body_bytes.unwrap_or(64 * 1024),
            max_failures: auth.max_failures.unwrap_or(5),
            lockout_seconds: auth.lockout_seconds.unwrap_or(60),
            group,
        };
        let insecure_ok = args.allow_insecure || file.allow_insecure.unwrap_or(false);
        for addr in [Some(config.listen), config.metrics_listen]
            .into_iter()
            .flatten()
        {
            if !addr.ip().is_loopback() && config.tls.is_none() && !insecure_ok {
                bail!(
                    "refusing to serve plain HTTP on non-loopback address {addr}: give --tls-cert and --tls-key, \
                     or --allow-insecure"
                );
            }
        }
        if config.external.is_empty() != config.internal.is_empty() {
            bail!("attaching at start needs both external and internal interfaces");
        }
        if let Some(g) = &config.group {
            let name_ok = !g.gateway.is_empty()
                && g.gateway.len() <= 64
                && g.gateway
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !name_ok {
                bail!(
                    "gateway name {:?} must be 1-64 letters, digits, '-', '_' or '.'",
                    g.gateway
                );
            }
            if !matches!(config.store, StoreSpec::Etcd(_)) {
                bail!(
                    "--gateway needs the state in etcd (--store etcd://HOST:PORT[,...]): a gateway group shares it"
                );
            }
        } else if !args.tenant_gateway.is_empty() {
            bail!("--tenant-gateway needs --gateway: only a gateway group moves tenant addresses");
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: &Path) -> AgentArgs {
        AgentArgs {
            config: Some(config.to_owned()),
            listen: None,
            metrics_listen: None,
            tls_cert: None,
            tls_key: None,
            allow_insecure: false,
            external: Vec::new(),
            internal: Vec::new(),
            mode: None,
            no_follow: false,
            max_associations: None,
            gateway: None,
            lease_ttl: None,
            tenant_gateway: Vec::new(),
        }
    }

    const DEFAULTS: (&str, &str) = ("/var/lib/floatip/state.db", "/sys/fs/bpf/floatip");

    fn load(text: &str, tweak: impl FnOnce(&mut AgentArgs)) -> Result<Config> {
        let dir = crate::store::TempDir::new("agent-config");
        let path = dir.0.join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let mut a = args(&path);
        tweak(&mut a);
        Config::load(
            &a,
            None,
            None,
            None,
            (Path::new(DEFAULTS.0), Path::new(DEFAULTS.1)),
        )
    }

    #[test]
    fn the_shipped_example_loads_with_defaults() {
        let c = load(include_str!("../../../packaging/agent.toml"), |_| {}).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.store, StoreSpec::Sqlite(DEFAULTS.0.into()));
        assert!(c.tls.is_none() && c.external.is_empty() && c.metrics_listen.is_none());
        assert_eq!(
            (c.max_body_bytes, c.max_failures, c.lockout_seconds),
            (65536, 5, 60)
        );
    }

    #[test]
    fn flags_override_the_file() {
        let text = "listen = \"127.0.0.2:9000\"\nstate = \"/srv/state.db\"\n[dataplane]\nexternal = [\"e0\"]\ninternal = [\"i0\"]\nmode = \"tc\"\n";
        let c = load(text, |_| {}).unwrap();
        assert_eq!(
            (c.listen.to_string().as_str(), c.mode),
            ("127.0.0.2:9000", Mode::Tc)
        );
        assert_eq!(c.store, StoreSpec::Sqlite("/srv/state.db".into()));
        let c = load(text, |a| {
            a.listen = Some("127.0.0.3:1".parse().unwrap());
            a.internal = vec!["i1".into()];
            a.mode = Some(Mode::Xdp);
        })
        .unwrap();
        assert_eq!(
            (c.listen.to_string().as_str(), c.internal.as_slice(), c.mode),
            ("127.0.0.3:1", &["i1".to_string()][..], Mode::Xdp)
        );
    }

    #[test]
    fn store_from_the_file_or_the_flags() {
        let dir = crate::store::TempDir::new("agent-config-store");
        let path = dir.0.join("agent.toml");
        let with = |text: &str, store: Option<&str>, state: Option<&Path>| {
            std::fs::write(&path, text).unwrap();
            Config::load(
                &args(&path),
                store,
                state,
                None,
                (Path::new(DEFAULTS.0), Path::new(DEFAULTS.1)),
            )
        };
        let etcd = |e: &[&str]| StoreSpec::Etcd(e.iter().map(|s| (*s).to_owned()).collect());
        let file = "store = \"etcd://10.0.0.1:2379,10.0.0.2:2379\"\nstate = \"/srv/s.db\"\n";
        assert_eq!(
            with(file, None, None).unwrap().store,
            etcd(&["10.0.0.1:2379", "10.0.0.2:2379"])
        );
        assert_eq!(
            with(file, Some("etcd://h:1"), None).unwrap().store,
            etcd(&["h:1"])
        );
        assert_eq!(
            with(file, None, Some(Path::new("/x.db"))).unwrap().store,
            StoreSpec::Sqlite("/x.db".into())
        );
        assert_eq!(
            with("state = \"/srv/s.db\"\n", None, None).unwrap().store,
            StoreSpec::Sqlite("/srv/s.db".into())
        );
        let e = format!(
            "{:#}",
            with("store = \"redis://h:1\"\n", None, None).unwrap_err()
        );
        assert!(e.contains("agent.toml: store: unknown store scheme"), "{e}");
        let e = with("", Some("etcd://nope"), None).unwrap_err();
        assert_eq!(crate::error::kind_of(&e), crate::error::ErrorKind::Invalid);
    }

    #[test]
    fn refusals() {
        let e =
            |text: &str, tweak: fn(&mut AgentArgs)| format!("{:#}", load(text, tweak).unwrap_err());
        assert!(
            e("listen = \"192.0.2.1:9696\"\n", |_| {}).contains("refusing to serve plain HTTP")
        );
        assert!(
            load(
                "listen = \"192.0.2.1:9696\"\nallow_insecure = true\n",
                |_| {}
            )
            .is_ok()
        );
        assert!(load("", |a| a.listen = Some("192.0.2.1:9696".parse().unwrap())).is_err());
        assert!(
            load("", |a| {
                a.listen = Some("192.0.2.1:9696".parse().unwrap());
                a.tls_cert = Some("c".into());
                a.tls_key = Some("k".into());
            })
            .is_ok()
        );
        assert!(e("colour = 1\n", |_| {}).contains("unknown field `colour`"));
        assert!(e("[dataplane]\nexternal = [\"e0\"]\n", |_| {}).contains("needs both"));
        assert!(e("[dataplane]\nmode = \"fast\"\n", |_| {}).contains("mode 'fast'"));
        // A group needs etcd, a valid name, tenant addresses in the one syntax.
        assert!(e("[group]\ngateway = \"gw1\"\n", |_| {}).contains("needs the state in etcd"));
        let etcd = "store = \"etcd://h:1\"\n[group]\n";
        assert!(e(&format!("{etcd}gateway = \"gw 1\"\n"), |_| {}).contains("gateway name"));
        assert!(
            e(
                &format!("{etcd}gateway = \"g\"\ntenant_gateways = [\"x\"]\n"),
                |_| {}
            )
            .contains("POOL=ADDRESS/LEN@IFACE")
        );
        assert!(
            e(&format!("{etcd}gateway = \"g\"\nlease_ttl = 0\n"), |_| {}).contains("lease_ttl")
        );
        let c = load(
            &format!("{etcd}gateway = \"g\"\ntenant_gateways = [\"p=10.0.0.1/24@i0\"]\n"),
            |_| {},
        )
        .unwrap();
        let g = c.group.unwrap();
        assert_eq!(
            (g.gateway.as_str(), g.lease_ttl.as_secs(), g.tenant.len()),
            ("g", 2, 1)
        );
        assert!(
            e("", |a| a.tenant_gateway =
                vec!["p=10.0.0.1/24@i0".parse().unwrap()])
            .contains("needs --gateway")
        );
    }
}
