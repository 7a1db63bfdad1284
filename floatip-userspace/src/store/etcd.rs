//! The state in etcd (v3 API, through `etcd-client`): the same rows as the SQLite tables, one
//! JSON value per key under `/floatip/` (`meta`, `pool/NAME`, `ip/ADDRESS`, `quota/PROJECT`,
//! `port/ID`, `user/NAME`), and the same constraints, checked here.
//!
//! A transaction reads every key under the prefix at one revision (a consistent snapshot),
//! runs the closure on that copy, and commits what changed in one etcd `Txn` that compares
//! `meta`'s `mod_revision` with the one it read and rewrites `meta`. Every write rewrites
//! `meta`, so the compare fails if any other write committed in between (a compare-and-swap
//! over the whole state): two processes can never both allocate one address, nor give one
//! fixed IP two floating IPs, because the loser's checks run again on the winner's state.
//! A lost compare runs the closure again (with a short random back-off) for up to
//! [`RETRY_FOR`]. Writes are serialised, as SQLite's `BEGIN IMMEDIATE` serialises them: a
//! control plane's rate, not a data plane's.
//!
//! No group commit: etcd syncs its WAL per Raft proposal and batches concurrent proposals
//! itself, so a batch of the agent's commits each request at once, and a request's answer
//! never waits for another's.
//!
//! The client's connect and request timeouts are short ([`CONNECT_TIMEOUT`],
//! [`REQUEST_TIMEOUT`]): with etcd down or without quorum a command fails in seconds, with
//! one line ([`ErrorKind::Unavailable`]: exit 5, HTTP 503), and changes nothing.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::{FloatingIpRow, IpFilter, PoolRow, PortRow, QuotaRow, StoreTx, Tx, UserRow};
use crate::error::{ErrorKind, error};

pub(super) const PREFIX: &str = "/floatip/";
/// The generation, identity and id counters; rewritten by every write (the CAS sequence).
pub(super) const META: &str = "/floatip/meta";
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a write keeps retrying compare-and-swap conflicts before it gives up.
pub const RETRY_FOR: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    generation: u64,
    identity: u64,
    /// The next floating IP id (never reused, as SQLite's AUTOINCREMENT).
    next_id: i64,
    /// The next port's creation sequence number (ports list in creation order).
    next_port: i64,
    /// A random token of the write that last put `meta`: how a writer whose `Txn` got no
    /// answer tells whether it committed (see [`EtcdStore::committed`]).
    #[serde(default)]
    write: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StoredPort {
    seq: i64,
    row: PortRow,
}

/// The whole state, as one transaction sees and changes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    meta: Meta,
    pools: BTreeMap<String, PoolRow>,
    ips: BTreeMap<u32, FloatingIpRow>,
    quotas: BTreeMap<String, u32>,
    ports: BTreeMap<String, StoredPort>,
    users: BTreeMap<String, UserRow>,
}

impl State {
    fn decode(kvs: &[etcd_client::KeyValue]) -> Result<(Self, i64)> {
        let mut s = Self::default();
        let mut meta_rev = 0;
        for kv in kvs {
            let key = std::str::from_utf8(kv.key())?;
            let v = kv.value();
            let bad = || anyhow::anyhow!("malformed etcd key {key}");
            let rest = key.strip_prefix(PREFIX).ok_or_else(bad)?;
            if key == META {
                s.meta = serde_json::from_slice(v)?;
                meta_rev = kv.mod_revision();
            } else if let Some(name) = rest.strip_prefix("pool/") {
                s.pools.insert(name.to_owned(), serde_json::from_slice(v)?);
            } else if let Some(a) = rest.strip_prefix("ip/") {
                let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
                s.ips.insert(a.into(), serde_json::from_slice(v)?);
            } else if let Some(p) = rest.strip_prefix("quota/") {
                s.quotas.insert(p.to_owned(), serde_json::from_slice(v)?);
            } else if let Some(id) = rest.strip_prefix("port/") {
                s.ports.insert(id.to_owned(), serde_json::from_slice(v)?);
            } else if let Some(name) = rest.strip_prefix("user/") {
                s.users.insert(name.to_owned(), serde_json::from_slice(v)?);
            } else {
                return Err(bad());
            }
        }
        Ok((s, meta_rev))
    }

    /// Every key but `meta`, with its value.
    fn encode(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.pools {
            out.insert(format!("{PREFIX}pool/{k}"), serde_json::to_vec(v)?);
        }
        for (k, v) in &self.ips {
            out.insert(
                format!("{PREFIX}ip/{}", Ipv4Addr::from(*k)),
                serde_json::to_vec(v)?,
            );
        }
        for (k, v) in &self.quotas {
            out.insert(format!("{PREFIX}quota/{k}"), serde_json::to_vec(v)?);
        }
        for (k, v) in &self.ports {
            out.insert(format!("{PREFIX}port/{k}"), serde_json::to_vec(v)?);
        }
        for (k, v) in &self.users {
            out.insert(format!("{PREFIX}user/{k}"), serde_json::to_vec(v)?);
        }
        Ok(out)
    }
}

/// A connection to the etcd cluster holding the state.
pub struct EtcdStore {
    /// The client runs on a runtime of its own: the store is used from threads that are not
    /// tokio's (the CLI, the agent's control thread).
    rt: tokio::runtime::Runtime,
    client: Client,
    path: PathBuf,
    /// The revision of the last full read: the state a resync brought the maps to.
    last_revision: i64,
    /// Each floating IP's `mod_revision` as last read or written: a gateway that has applied
    /// that revision carries its current association.
    ip_revisions: std::collections::HashMap<Ipv4Addr, i64>,
}

/// The largest state one read takes in.
const MAX_STATE_BYTES: usize = 512 << 20;

/// Between two tries of a request no member took.
const RETRY_GAP: Duration = Duration::from_millis(20);

/// Whether the request failed before it left: the connection to the member it was given to
/// was refused.
fn not_sent(e: &etcd_client::Error) -> bool {
    let text = format!("{e:?}");
    text.contains("ConnectError") || text.contains("ConnectionRefused")
}

/// etcd unreachable, without quorum, or slower than the timeouts: one line naming it.
fn unavailable(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    let cause = e.to_string();
    let cause = cause.lines().next().unwrap_or("").trim();
    error(
        ErrorKind::Unavailable,
        format!(
            "etcd at {} is unavailable (down or without quorum): {cause}",
            path.display()
        ),
    )
}

impl EtcdStore {
    /// Connects to `endpoints` (`HOST:PORT`s) and makes sure the state's `meta` key exists
    /// (the first connection to an empty cluster creates it, with a fresh identity).
    pub fn connect(endpoints: &[String]) -> Result<Self> {
        let path = PathBuf::from(format!("etcd://{}", endpoints.join(",")));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let client = rt
            .block_on(async {
                tokio::time::timeout(
                    CONNECT_TIMEOUT + REQUEST_TIMEOUT,
                    Client::connect(&urls, Some(options)),
                )
                .await
            })
            .map_err(|e| unavailable(&path, e))?
            .map_err(|e| unavailable(&path, e))?;
        let mut store = Self {
            rt,
            client,
            path,
            last_revision: 0,
            ip_revisions: Default::default(),
        };
        store.init_meta()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one request with the request timeout as an outer bound too (a member that
    /// accepts the connection but never answers must not hang a CLI). The client balances
    /// over the members but hands back a dead member's connection error instead of trying
    /// another: a request that was never sent (connection refused) is sent again, on any
    /// member, until the timeout. Nothing else is repeated (a sent `Txn` may have committed).
    fn call<T>(
        &mut self,
        f: impl AsyncFnMut(&mut Client) -> Result<T, etcd_client::Error>,
    ) -> Result<T> {
        self.call_retrying(not_sent, f)
    }

    /// [`Self::call`] for a request that is safe to repeat (a read): also sent again when
    /// the member died under it or the cluster is between leaders.
    fn read_call<T>(
        &mut self,
        f: impl AsyncFnMut(&mut Client) -> Result<T, etcd_client::Error>,
    ) -> Result<T> {
        self.call_retrying(
            |e| {
                // A member killed under the request (a broken stream), or one between leaders.
                let text = format!("{e:?}");
                not_sent(e)
                    || matches!(e, etcd_client::Error::TransportError(_))
                    || ["transport error", "no leader", "leader changed"]
                        .iter()
                        .any(|t| text.contains(t))
            },
            f,
        )
    }

    fn call_retrying<T>(
        &mut self,
        again: fn(&etcd_client::Error) -> bool,
        mut f: impl AsyncFnMut(&mut Client) -> Result<T, etcd_client::Error>,
    ) -> Result<T> {
        let Self {
            rt, client, path, ..
        } = self;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        rt.block_on(async {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, f(client)).await {
                    Err(elapsed) => return Err(unavailable(path, elapsed)),
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) if again(&e) && Instant::now() + RETRY_GAP < deadline => {
                        tokio::time::sleep(RETRY_GAP).await;
                    }
                    Ok(Err(e)) => return Err(unavailable(path, e)),
                }
            }
        })
    }

    fn init_meta(&mut self) -> Result<()> {
        let meta = Meta {
            generation: 0,
            identity: (uuid::Uuid::new_v4().as_u64_pair().0 & (i64::MAX as u64)) | 1,
            next_id: 1,
            next_port: 1,
            write: 0,
        };
        let value = serde_json::to_vec(&meta)?;
        // Created only if absent: a concurrent first connection's identity wins alike.
        let txn = Txn::new()
            .when([Compare::version(META, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(META, value, None)]);
        self.call(async |c| c.txn(txn.clone()).await)?;
        Ok(())
    }

    /// The whole state at one revision, and `meta`'s `mod_revision` in it.
    fn load(&mut self) -> Result<(State, i64)> {
        let resp = self.read_call(async |c| {
            // tonic refuses answers over 4 MiB by default: some 15,000 floating IPs.
            c.kv_client()
                .max_decoding_message_size(MAX_STATE_BYTES)
                .get(PREFIX, Some(GetOptions::new().with_prefix()))
                .await
        })?;
        let (state, rev) = State::decode(resp.kvs())?;
        self.last_revision = resp.header().map_or(0, |h| h.revision());
        self.ip_revisions = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                let a = key
                    .strip_prefix(PREFIX)?
                    .strip_prefix("ip/")?
                    .parse()
                    .ok()?;
                Some((a, kv.mod_revision()))
            })
            .collect();
        if rev == 0 {
            return Err(error(
                ErrorKind::Unavailable,
                format!(
                    "etcd at {} holds no floatip state (no {META} key)",
                    self.path.display()
                ),
            ));
        }
        Ok((state, rev))
    }

    /// Benchmark seeding: allocates every floating IP of `pairs` in `pool` and associates it,
    /// in transactions of at most 100 keys (not one atomic change: for filling an empty
    /// state fast, without a full read per address), then bumps the generation once.
    pub fn seed_pairs(&mut self, pool: &str, pairs: &[(Ipv4Addr, Ipv4Addr)]) -> Result<()> {
        let (state, _) = self.load()?;
        if !state.pools.contains_key(pool) {
            bail!("pool {pool} does not exist");
        }
        let mut meta = state.meta.clone();
        let created_at = now_utc();
        for chunk in pairs.chunks(100) {
            let mut ops = Vec::with_capacity(chunk.len());
            for (floating, fixed) in chunk {
                if state.ips.contains_key(&u32::from(*floating)) {
                    bail!("floating IP {floating} is allocated already");
                }
                let row = FloatingIpRow {
                    id: meta.next_id,
                    address: *floating,
                    pool: pool.to_owned(),
                    project: None,
                    description: None,
                    fixed_ip: Some(*fixed),
                    instance: None,
                    tags: Vec::new(),
                    created_at: created_at.clone(),
                };
                meta.next_id += 1;
                ops.push(TxnOp::put(
                    format!("{PREFIX}ip/{floating}"),
                    serde_json::to_vec(&row)?,
                    None,
                ));
            }
            let txn = Txn::new().and_then(ops);
            self.call(async |c| c.txn(txn.clone()).await)?;
        }
        meta.generation += 1;
        meta.write = uuid::Uuid::new_v4().as_u64_pair().0;
        let value = serde_json::to_vec(&meta)?;
        self.call(async |c| c.put(META, value.clone(), None).await)?;
        Ok(())
    }

    /// The `mod_revision` of floating IP `address` as last read or written.
    pub fn ip_revision(&self, address: Ipv4Addr) -> Option<i64> {
        self.ip_revisions.get(&address).copied()
    }

    /// The revision of the last full read (see [`Self::read`]).
    pub fn last_revision(&self) -> i64 {
        self.last_revision
    }

    /// The gateway group now (see [`super::group`]).
    pub fn group_view(&mut self) -> Result<super::GroupView> {
        let resp = self.read_call(async |c| {
            c.get(super::group::GROUP, Some(GetOptions::new().with_prefix()))
                .await
        })?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(super::GroupView::decode(resp.kvs(), revision))
    }

    pub fn read<T>(&mut self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let (state, _) = self.load()?;
        f(&EtcdTx::new(state))
    }

    /// See the module: a snapshot, the closure, one compare-and-swap `Txn`; run again on a
    /// lost compare.
    pub fn write<T>(&mut self, f: &mut impl FnMut(&Tx<'_>) -> Result<T>) -> Result<T> {
        let deadline = Instant::now() + RETRY_FOR;
        for attempt in 1u32.. {
            let (before, meta_rev) = self.load()?;
            let tx = EtcdTx::new(before.clone());
            let value = f(&tx)?;
            let after = tx.state.into_inner();
            if after == before {
                return Ok(value);
            }
            let (old, new) = (before.encode()?, after.encode()?);
            let mut ops: Vec<TxnOp> = old
                .keys()
                .filter(|k| !new.contains_key(*k))
                .map(|k| TxnOp::delete(k.as_str(), None))
                .collect();
            ops.extend(
                new.iter()
                    .filter(|(k, v)| old.get(*k) != Some(v))
                    .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None)),
            );
            let token = uuid::Uuid::new_v4().as_u64_pair().0;
            let meta = Meta {
                write: token,
                ..after.meta
            };
            ops.push(TxnOp::put(META, serde_json::to_vec(&meta)?, None));
            let txn = Txn::new()
                .when([Compare::mod_revision(META, CompareOp::Equal, meta_rev)])
                .and_then(ops);
            match self.call(async |c| c.txn(txn.clone()).await) {
                Ok(r) if r.succeeded() => {
                    let revision = r.header().map_or(0, |h| h.revision());
                    for (k, _) in new.iter().filter(|(k, v)| old.get(*k) != Some(v)) {
                        if let Some(a) = k.strip_prefix(PREFIX).and_then(|r| r.strip_prefix("ip/"))
                            && let Ok(a) = a.parse()
                        {
                            self.ip_revisions.insert(a, revision);
                        }
                    }
                    return Ok(value);
                }
                Ok(_) => {}
                // No answer (a leader change, a timeout): it may have committed all the same.
                Err(e) => match self.committed(meta_rev, token) {
                    Ok(true) => return Ok(value),
                    Ok(false) => {}
                    // Quorum lost between the read and the commit: etcd may still apply it
                    // when quorum returns (if no other write came first), so say so.
                    Err(_) => {
                        return Err(error(
                            ErrorKind::Unavailable,
                            format!("{e:#}; the change may still be applied once etcd recovers"),
                        ));
                    }
                },
            }
            if Instant::now() >= deadline {
                return Err(error(
                    ErrorKind::Unavailable,
                    format!(
                        "etcd at {}: gave up after {attempt} attempts lost to concurrent writes",
                        self.path.display()
                    ),
                ));
            }
            // Back off a random 0..(2 x attempts) ms, at most 50 ms, so racing writers spread.
            let cap = u128::from(attempt.min(25) * 2);
            let jitter = uuid::Uuid::new_v4().as_u128() % (cap * 1000);
            std::thread::sleep(Duration::from_micros(jitter as u64));
        }
        unreachable!()
    }
}

impl EtcdStore {
    /// Whether the write that compared `meta` at `meta_rev` and put it with `token`
    /// committed. It can only have been the next change of `meta` after `meta_rev`; the
    /// linearizable read first lets any such write in flight be decided (a leader serves it
    /// only after committing an entry of its own term, and with it everything before).
    fn committed(&mut self, meta_rev: i64, token: u64) -> Result<bool> {
        let now = self.read_call(async |c| c.get(META, None).await)?;
        let Some(kv) = now.kvs().first() else {
            return Ok(false);
        };
        if kv.mod_revision() == meta_rev {
            return Ok(false);
        }
        let options = etcd_client::WatchOptions::new().with_start_revision(meta_rev + 1);
        let first = self.read_call(async |c| {
            let mut stream = c.watch(META, Some(options.clone())).await?;
            while let Some(resp) = stream.message().await? {
                if let Some(kv) = resp.events().first().and_then(|e| e.kv()) {
                    return Ok(Some(kv.value().to_vec()));
                }
                if resp.canceled() {
                    break;
                }
            }
            Ok(None)
        })?;
        let Some(value) = first else {
            bail!("cannot read the history of {META}");
        };
        Ok(serde_json::from_slice::<Meta>(&value)?.write == token)
    }
}

/// The time as SQLite's `strftime('%Y-%m-%dT%H:%M:%SZ', 'now')` writes it.
fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One transaction on a snapshot: what the closure changes is kept here until the commit.
pub struct EtcdTx {
    state: RefCell<State>,
    bumped: Cell<bool>,
}

// The constraint messages are SQLite's, so both backends fail alike.
fn unique(column: &str) -> anyhow::Error {
    anyhow::anyhow!("UNIQUE constraint failed: {column}")
}

fn foreign_key() -> anyhow::Error {
    anyhow::anyhow!("FOREIGN KEY constraint failed")
}

impl EtcdTx {
    fn new(state: State) -> Self {
        Self {
            state: RefCell::new(state),
            bumped: Cell::new(false),
        }
    }

    fn bump_generation(&self) {
        if !self.bumped.replace(true) {
            self.state.borrow_mut().meta.generation += 1;
        }
    }

    pub fn generation(&self) -> Result<u64> {
        Ok(self.state.borrow().meta.generation)
    }

    pub fn identity(&self) -> Result<u64> {
        Ok(self.state.borrow().meta.identity)
    }

    pub fn pool_insert(
        &self,
        name: &str,
        ranges: &str,
        excludes: &str,
        external_iface: Option<&str>,
        description: Option<&str>,
    ) -> Result<PoolRow> {
        let mut s = self.state.borrow_mut();
        if s.pools.contains_key(name) {
            return Err(unique("pools.name"));
        }
        let row = PoolRow {
            name: name.to_owned(),
            ranges: ranges.to_owned(),
            excludes: excludes.to_owned(),
            external_iface: external_iface.map(str::to_owned),
            description: description.map(str::to_owned),
            created_at: now_utc(),
        };
        s.pools.insert(name.to_owned(), row.clone());
        Ok(row)
    }

    pub fn pool_get(&self, name: &str) -> Result<Option<PoolRow>> {
        Ok(self.state.borrow().pools.get(name).cloned())
    }

    pub fn pool_list(&self) -> Result<Vec<PoolRow>> {
        Ok(self.state.borrow().pools.values().cloned().collect())
    }

    pub fn pool_set_description(&self, name: &str, description: Option<&str>) -> Result<bool> {
        let mut s = self.state.borrow_mut();
        let Some(p) = s.pools.get_mut(name) else {
            return Ok(false);
        };
        p.description = description.map(str::to_owned);
        Ok(true)
    }

    pub fn pool_delete(&self, name: &str) -> Result<bool> {
        let mut s = self.state.borrow_mut();
        if !s.pools.contains_key(name) {
            return Ok(false);
        }
        if s.ips.values().any(|r| r.pool == name) {
            return Err(foreign_key());
        }
        s.pools.remove(name);
        Ok(true)
    }

    pub fn ip_insert(
        &self,
        address: Ipv4Addr,
        pool: &str,
        project: Option<&str>,
        description: Option<&str>,
    ) -> Result<FloatingIpRow> {
        let mut s = self.state.borrow_mut();
        if s.ips.contains_key(&address.into()) {
            return Err(unique("floating_ips.address"));
        }
        if !s.pools.contains_key(pool) {
            return Err(foreign_key());
        }
        let id = s.meta.next_id.max(1);
        s.meta.next_id = id + 1;
        let row = FloatingIpRow {
            id,
            address,
            pool: pool.to_owned(),
            project: project.map(str::to_owned),
            description: description.map(str::to_owned),
            fixed_ip: None,
            instance: None,
            tags: Vec::new(),
            created_at: now_utc(),
        };
        s.ips.insert(address.into(), row.clone());
        Ok(row)
    }

    pub fn ip_get(&self, address: Ipv4Addr) -> Result<Option<FloatingIpRow>> {
        Ok(self.state.borrow().ips.get(&address.into()).cloned())
    }

    pub fn ip_by_fixed(&self, fixed: Ipv4Addr) -> Result<Option<FloatingIpRow>> {
        Ok(self
            .state
            .borrow()
            .ips
            .values()
            .find(|r| r.fixed_ip == Some(fixed))
            .cloned())
    }

    pub fn ip_list(&self, filter: &IpFilter<'_>) -> Result<Vec<FloatingIpRow>> {
        let s = self.state.borrow();
        Ok(s.ips
            .values()
            .filter(|r| filter.pool.is_none_or(|p| r.pool == p))
            .filter(|r| {
                filter
                    .project
                    .is_none_or(|p| r.project.as_deref() == Some(p))
            })
            .filter(|r| filter.associated.is_none_or(|a| r.fixed_ip.is_some() == a))
            .filter(|r| filter.address.is_none_or(|a| r.address == a))
            .filter(|r| filter.fixed_ip.is_none_or(|f| r.fixed_ip == Some(f)))
            .filter(|r| {
                filter
                    .instance
                    .is_none_or(|i| r.instance.as_deref() == Some(i))
            })
            .cloned()
            .collect())
    }

    pub fn ip_addresses_in_pool(&self, pool: &str) -> Result<Vec<Ipv4Addr>> {
        let s = self.state.borrow();
        Ok(s.ips
            .values()
            .filter(|r| r.pool == pool)
            .map(|r| r.address)
            .collect())
    }

    pub fn ip_count_in_pool(&self, pool: &str) -> Result<u64> {
        let s = self.state.borrow();
        Ok(s.ips.values().filter(|r| r.pool == pool).count() as u64)
    }

    pub fn ip_count_for_project(&self, project: &str) -> Result<u64> {
        let s = self.state.borrow();
        Ok(s.ips
            .values()
            .filter(|r| r.project.as_deref() == Some(project))
            .count() as u64)
    }

    pub fn ip_set_association(
        &self,
        address: Ipv4Addr,
        fixed: Option<Ipv4Addr>,
        instance: Option<&str>,
    ) -> Result<()> {
        {
            let mut s = self.state.borrow_mut();
            if !s.ips.contains_key(&address.into()) {
                bail!("floating IP {address} not found");
            }
            if fixed.is_some()
                && s.ips
                    .values()
                    .any(|r| r.address != address && r.fixed_ip == fixed)
            {
                return Err(unique("floating_ips.fixed_ip"));
            }
            let row = s.ips.get_mut(&address.into()).expect("checked");
            row.fixed_ip = fixed;
            row.instance = instance.map(str::to_owned);
        }
        self.bump_generation();
        Ok(())
    }

    pub fn ip_delete(&self, address: Ipv4Addr) -> Result<bool> {
        let removed = self.state.borrow_mut().ips.remove(&address.into());
        let Some(row) = removed else {
            return Ok(false);
        };
        if row.fixed_ip.is_some() {
            self.bump_generation();
        }
        Ok(true)
    }

    pub fn associations(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
        let s = self.state.borrow();
        Ok(s.ips
            .values()
            .filter_map(|r| Some((r.address, r.fixed_ip?)))
            .collect())
    }

    pub fn quota_set(&self, project: &str, floating_ips: u32) -> Result<()> {
        self.state
            .borrow_mut()
            .quotas
            .insert(project.to_owned(), floating_ips);
        Ok(())
    }

    pub fn quota_get(&self, project: &str) -> Result<Option<u32>> {
        Ok(self.state.borrow().quotas.get(project).copied())
    }

    pub fn quota_list(&self) -> Result<Vec<QuotaRow>> {
        let projects: BTreeSet<String> = {
            let s = self.state.borrow();
            s.quotas
                .keys()
                .cloned()
                .chain(s.ips.values().filter_map(|r| r.project.clone()))
                .collect()
        };
        projects.iter().map(|p| self.quota_row(p)).collect()
    }

    pub fn ip_get_by_id(&self, id: i64) -> Result<Option<FloatingIpRow>> {
        let s = self.state.borrow();
        Ok(s.ips.values().find(|r| r.id == id).cloned())
    }

    pub fn ip_set_description(&self, id: i64, description: Option<&str>) -> Result<()> {
        let mut s = self.state.borrow_mut();
        if let Some(r) = s.ips.values_mut().find(|r| r.id == id) {
            r.description = description.map(str::to_owned);
        }
        Ok(())
    }

    pub fn quota_delete(&self, project: &str) -> Result<bool> {
        Ok(self.state.borrow_mut().quotas.remove(project).is_some())
    }

    pub fn port_insert(&self, p: &PortRow) -> Result<PortRow> {
        let mut s = self.state.borrow_mut();
        if s.ports.contains_key(&p.id) {
            return Err(unique("ports.id"));
        }
        if s.ports.values().any(|q| q.row.fixed_ip == p.fixed_ip) {
            return Err(unique("ports.fixed_ip"));
        }
        let seq = s.meta.next_port.max(1);
        s.meta.next_port = seq + 1;
        let row = PortRow {
            created_at: now_utc(),
            ..p.clone()
        };
        s.ports.insert(
            p.id.clone(),
            StoredPort {
                seq,
                row: row.clone(),
            },
        );
        Ok(row)
    }

    pub fn port_get(&self, id: &str) -> Result<Option<PortRow>> {
        Ok(self.state.borrow().ports.get(id).map(|p| p.row.clone()))
    }

    pub fn port_by_fixed(&self, fixed: Ipv4Addr) -> Result<Option<PortRow>> {
        let s = self.state.borrow();
        Ok(s.ports
            .values()
            .find(|p| p.row.fixed_ip == fixed)
            .map(|p| p.row.clone()))
    }

    pub fn port_list(&self, project: Option<&str>) -> Result<Vec<PortRow>> {
        let s = self.state.borrow();
        let mut ports: Vec<&StoredPort> = s
            .ports
            .values()
            .filter(|p| project.is_none_or(|pr| p.row.project == pr))
            .collect();
        ports.sort_by_key(|p| p.seq);
        Ok(ports.into_iter().map(|p| p.row.clone()).collect())
    }

    pub fn port_update(&self, p: &PortRow) -> Result<()> {
        let mut s = self.state.borrow_mut();
        if let Some(q) = s.ports.get_mut(&p.id) {
            q.row.name = p.name.clone();
            q.row.device_id = p.device_id.clone();
            q.row.device_owner = p.device_owner.clone();
            q.row.description = p.description.clone();
        }
        Ok(())
    }

    pub fn port_delete(&self, id: &str) -> Result<bool> {
        Ok(self.state.borrow_mut().ports.remove(id).is_some())
    }

    pub fn ip_tags_add(&self, id: i64, tags: &[String]) -> Result<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let mut s = self.state.borrow_mut();
        let Some(r) = s.ips.values_mut().find(|r| r.id == id) else {
            return Err(foreign_key());
        };
        let mut set: BTreeSet<String> = r.tags.drain(..).collect();
        set.extend(tags.iter().cloned());
        r.tags = set.into_iter().collect();
        Ok(())
    }

    pub fn ip_tags_remove(&self, id: i64, tags: Option<&[String]>) -> Result<()> {
        let mut s = self.state.borrow_mut();
        if let Some(r) = s.ips.values_mut().find(|r| r.id == id) {
            match tags {
                None => r.tags.clear(),
                Some(tags) => r.tags.retain(|t| !tags.contains(t)),
            }
        }
        Ok(())
    }

    pub fn user_insert(&self, name: &str, project: &str, role: &str, hash: &str) -> Result<()> {
        let mut s = self.state.borrow_mut();
        if !matches!(role, "admin" | "member") {
            bail!("CHECK constraint failed: role IN ('admin', 'member')");
        }
        if s.users.contains_key(name) {
            return Err(unique("users.name"));
        }
        s.users.insert(
            name.to_owned(),
            UserRow {
                name: name.to_owned(),
                project: project.to_owned(),
                role: role.to_owned(),
                password_hash: hash.to_owned(),
                created_at: now_utc(),
            },
        );
        Ok(())
    }

    pub fn user_get(&self, name: &str) -> Result<Option<UserRow>> {
        Ok(self.state.borrow().users.get(name).cloned())
    }

    pub fn user_list(&self) -> Result<Vec<UserRow>> {
        Ok(self.state.borrow().users.values().cloned().collect())
    }

    pub fn user_delete(&self, name: &str) -> Result<bool> {
        Ok(self.state.borrow_mut().users.remove(name).is_some())
    }

    pub fn project_names(&self) -> Result<Vec<String>> {
        let s = self.state.borrow();
        let names: BTreeSet<String> = s
            .users
            .values()
            .map(|u| u.project.clone())
            .chain(s.quotas.keys().cloned())
            .chain(s.ips.values().filter_map(|r| r.project.clone()))
            .chain(s.ports.values().map(|p| p.row.project.clone()))
            .collect();
        Ok(names.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_sqlites_format() {
        let t = now_utc();
        assert_eq!(t.len(), 20, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
    }
}
