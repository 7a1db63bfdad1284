//! The control-plane state: pools, floating IPs and their associations, quotas, ports, users
//! and the association generation, behind one interface ([`StoreTx`], through [`Store`]) with
//! two backends: SQLite (this file and its submodules, the only SQL) and etcd (`etcd.rs`, the
//! only etcd client).
//!
//! SQLite: every mutation runs in one `BEGIN IMMEDIATE` transaction ([`SqliteStore::write`]):
//! the write lock is taken up front, so checks made inside the transaction still hold when it
//! commits, even with several `floatip` processes running at once.
//!
//! The agent groups the requests queued at its control thread into one such transaction (a
//! batch, [`SqliteStore::begin_batch`]): each of its reads and writes is then a savepoint, which
//! a failing change rolls back alone, and the one commit at the end makes them all durable with
//! one sync of the WAL. etcd has no batch: see [`EtcdStore`].

use std::{
    cell::Cell,
    fs::{DirBuilder, OpenOptions},
    net::Ipv4Addr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

mod api;
mod ports;
mod tags;
mod users;

pub use ports::PortRow;
pub use users::UserRow;

mod etcd;
mod group;

pub use etcd::EtcdStore;
pub use group::{Change, GatewayInfo, GroupClient, GroupView, Lease, StateEvent, StateWatch};

/// Where the state lives: `--store` (or `store` in agent.toml). A plain path (or `sqlite:PATH`)
/// is the embedded SQLite database; `etcd://HOST:PORT[,HOST:PORT...]` an etcd cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    Sqlite(PathBuf),
    /// The members' `HOST:PORT`s, as given.
    Etcd(Vec<String>),
}

impl StoreSpec {
    /// Parses `--store`: an unknown scheme or a malformed etcd address list is an error of
    /// one line (no network is touched here).
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(rest) = text.strip_prefix("etcd://") {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let mut endpoints = Vec::new();
            for member in rest.split(',') {
                let Some((host, port)) = member.rsplit_once(':') else {
                    bail!(
                        "malformed store {text:?}: {member:?} is not HOST:PORT (etcd://HOST:PORT[,HOST:PORT...])"
                    );
                };
                let host_ok = !host.is_empty()
                    && host.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':')
                    });
                if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
                    bail!(
                        "malformed store {text:?}: {member:?} is not HOST:PORT (etcd://HOST:PORT[,HOST:PORT...])"
                    );
                }
                endpoints.push(member.to_owned());
            }
            return Ok(Self::Etcd(endpoints));
        }
        let path = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"));
        if let Some(path) = path {
            if path.is_empty() {
                bail!("malformed store {text:?}: sqlite:PATH needs a path");
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            bail!(
                "unknown store scheme {scheme:?} in {text:?}: use etcd://HOST:PORT[,HOST:PORT...] or a SQLite path"
            );
        }
        if text.is_empty() {
            bail!("empty store: use etcd://HOST:PORT[,HOST:PORT...] or a SQLite path");
        }
        Ok(Self::Sqlite(PathBuf::from(text)))
    }

    /// How messages name the store: the database's path, or the etcd URL.
    pub fn display_path(&self) -> PathBuf {
        match self {
            Self::Sqlite(p) => p.clone(),
            Self::Etcd(e) => PathBuf::from(format!("etcd://{}", e.join(","))),
        }
    }

    /// Whether the state already exists (a SQLite file; for etcd, always assumed: opening
    /// tells).
    pub fn exists(&self) -> bool {
        match self {
            Self::Sqlite(p) => p.exists(),
            Self::Etcd(_) => true,
        }
    }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.display_path().display())
    }
}

/// Declares the store interface once: the [`StoreTx`] trait, and for each backend's
/// transaction type an implementation that calls its inherent methods of the same names.
macro_rules! store_tx {
    (
        $($(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*
        provided { $($provided:item)* }
    ) => {
        /// One transaction of a store backend: every query and mutation of the state the
        /// control layer makes. Runs inside [`Store::read`] or [`Store::write`]; a write's
        /// changes become visible to others only when its closure returns `Ok`.
        pub trait StoreTx {
            $($(#[$doc])* fn $name(&self $(, $arg: $ty)*) -> $ret;)*
            $($provided)*
        }
        impl StoreTx for SqliteTx<'_> {
            $(fn $name(&self $(, $arg: $ty)*) -> $ret { SqliteTx::$name(self $(, $arg)*) })*
        }
        impl StoreTx for etcd::EtcdTx {
            $(fn $name(&self $(, $arg: $ty)*) -> $ret { etcd::EtcdTx::$name(self $(, $arg)*) })*
        }
    };
}

store_tx! {
    /// Generation of the associations: bumped once by every transaction that changes them.
    fn generation(&self) -> Result<u64>;
    /// The store's identity: non-zero, fixed at creation.
    fn identity(&self) -> Result<u64>;
    fn pool_insert(&self, name: &str, ranges: &str, excludes: &str, external_iface: Option<&str>, description: Option<&str>) -> Result<PoolRow>;
    fn pool_get(&self, name: &str) -> Result<Option<PoolRow>>;
    /// By name.
    fn pool_list(&self) -> Result<Vec<PoolRow>>;
    fn pool_set_description(&self, name: &str, description: Option<&str>) -> Result<bool>;
    /// Fails while the pool has addresses.
    fn pool_delete(&self, name: &str) -> Result<bool>;
    fn ip_insert(&self, address: Ipv4Addr, pool: &str, project: Option<&str>, description: Option<&str>) -> Result<FloatingIpRow>;
    fn ip_get(&self, address: Ipv4Addr) -> Result<Option<FloatingIpRow>>;
    fn ip_by_fixed(&self, fixed: Ipv4Addr) -> Result<Option<FloatingIpRow>>;
    /// By address.
    fn ip_list(&self, filter: &IpFilter<'_>) -> Result<Vec<FloatingIpRow>>;
    fn ip_addresses_in_pool(&self, pool: &str) -> Result<Vec<Ipv4Addr>>;
    fn ip_count_in_pool(&self, pool: &str) -> Result<u64>;
    fn ip_count_for_project(&self, project: &str) -> Result<u64>;
    /// One fixed IP has at most one floating IP: a second is refused.
    fn ip_set_association(&self, address: Ipv4Addr, fixed: Option<Ipv4Addr>, instance: Option<&str>) -> Result<()>;
    fn ip_delete(&self, address: Ipv4Addr) -> Result<bool>;
    fn associations(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>>;
    fn quota_set(&self, project: &str, floating_ips: u32) -> Result<()>;
    fn quota_get(&self, project: &str) -> Result<Option<u32>>;
    fn quota_list(&self) -> Result<Vec<QuotaRow>>;
    fn ip_get_by_id(&self, id: i64) -> Result<Option<FloatingIpRow>>;
    fn ip_set_description(&self, id: i64, description: Option<&str>) -> Result<()>;
    fn quota_delete(&self, project: &str) -> Result<bool>;
    fn port_insert(&self, p: &PortRow) -> Result<PortRow>;
    fn port_get(&self, id: &str) -> Result<Option<PortRow>>;
    fn port_by_fixed(&self, fixed: Ipv4Addr) -> Result<Option<PortRow>>;
    /// In creation order.
    fn port_list(&self, project: Option<&str>) -> Result<Vec<PortRow>>;
    fn port_update(&self, p: &PortRow) -> Result<()>;
    fn port_delete(&self, id: &str) -> Result<bool>;
    fn ip_tags_add(&self, id: i64, tags: &[String]) -> Result<()>;
    fn ip_tags_remove(&self, id: i64, tags: Option<&[String]>) -> Result<()>;
    fn user_insert(&self, name: &str, project: &str, role: &str, hash: &str) -> Result<()>;
    fn user_get(&self, name: &str) -> Result<Option<UserRow>>;
    fn user_list(&self) -> Result<Vec<UserRow>>;
    fn user_delete(&self, name: &str) -> Result<bool>;
    fn project_names(&self) -> Result<Vec<String>>;
    provided {
        /// Usage and limit of `project`.
        fn quota_row(&self, project: &str) -> Result<QuotaRow> {
            Ok(QuotaRow {
                project: project.to_owned(),
                used: self.ip_count_for_project(project)?,
                limit: self.quota_get(project)?,
            })
        }
    }
}

/// What the control layer's closures get: a transaction of whichever backend.
pub type Tx<'c> = dyn StoreTx + 'c;

/// The state store the control layer uses: SQLite (embedded, the default) or etcd.
pub enum Store {
    Sqlite(SqliteStore),
    /// Boxed: the client is large, and a `Store` is moved around.
    Etcd(Box<EtcdStore>),
}

impl Store {
    /// The SQLite database at `path`, created if needed ([`SqliteStore::open`]).
    pub fn open(path: &Path) -> Result<Self> {
        SqliteStore::open(path).map(Self::Sqlite)
    }

    /// The SQLite database at `path`, which must exist.
    pub fn open_existing(path: &Path) -> Result<Self> {
        SqliteStore::open_existing(path).map(Self::Sqlite)
    }

    /// The store `spec` names; `create`: a SQLite file may be created (etcd's keys are
    /// created by the first write whatever `create` says, as a cluster has no file to mistype).
    pub fn open_spec(spec: &StoreSpec, create: bool) -> Result<Self> {
        match spec {
            StoreSpec::Sqlite(p) if create => Self::open(p),
            StoreSpec::Sqlite(p) => Self::open_existing(p),
            StoreSpec::Etcd(endpoints) => {
                EtcdStore::connect(endpoints).map(|e| Self::Etcd(Box::new(e)))
            }
        }
    }

    /// The SQLite backend, if this is one.
    pub fn as_sqlite(&mut self) -> Option<&mut SqliteStore> {
        match self {
            Self::Sqlite(s) => Some(s),
            Self::Etcd(_) => None,
        }
    }

    /// How messages name the store: the database's path, or the etcd URL.
    pub fn path(&self) -> &Path {
        match self {
            Self::Sqlite(s) => s.path(),
            Self::Etcd(e) => e.path(),
        }
    }

    /// etcd: the revision of the last full read, the state a resync of the maps reflects.
    pub fn last_revision(&self) -> Option<i64> {
        match self {
            Self::Sqlite(_) => None,
            Self::Etcd(e) => Some(e.last_revision()),
        }
    }

    /// Benchmark seeding of an etcd state (see [`EtcdStore::seed_pairs`]).
    pub fn seed_pairs(&mut self, pool: &str, pairs: &[(Ipv4Addr, Ipv4Addr)]) -> Result<()> {
        match self {
            Self::Sqlite(_) => bail!("seeding is for etcd stores"),
            Self::Etcd(e) => e.seed_pairs(pool, pairs),
        }
    }

    /// etcd: the revision that last changed floating IP `address` (as last read or written).
    pub fn ip_revision(&self, address: Ipv4Addr) -> Option<i64> {
        match self {
            Self::Sqlite(_) => None,
            Self::Etcd(e) => e.ip_revision(address),
        }
    }

    /// etcd: the gateway group (which gateways are alive, what each applied and owns);
    /// SQLite has one gateway and no group.
    pub fn group_view(&mut self) -> Result<Option<GroupView>> {
        match self {
            Self::Sqlite(_) => Ok(None),
            Self::Etcd(e) => e.group_view().map(Some),
        }
    }

    /// SQLite: `PRAGMA quick_check`. etcd checks its own data.
    pub fn check_integrity(&mut self) -> Result<()> {
        match self {
            Self::Sqlite(s) => s.check_integrity(),
            Self::Etcd(_) => Ok(()),
        }
    }

    pub fn identity(&mut self) -> Result<u64> {
        self.read(|tx| tx.identity())
    }

    /// Runs `f` on a consistent snapshot of the state.
    pub fn read<T>(&mut self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        match self {
            Self::Sqlite(s) => s.read(|tx| f(tx)),
            Self::Etcd(e) => e.read(f),
        }
    }

    /// Runs `f` in a write transaction, made durable only if `f` succeeds. On etcd `f` may run
    /// more than once (a compare-and-swap lost to another writer runs it again on the newer
    /// state), so everything `f` does besides the store must be safe to redo.
    pub fn write<T>(&mut self, mut f: impl FnMut(&Tx<'_>) -> Result<T>) -> Result<T> {
        match self {
            Self::Sqlite(s) => s.write(|tx| f(tx)),
            Self::Etcd(e) => e.write(&mut f),
        }
    }

    /// Opens a group-commit batch. etcd has none: each request commits on its own (see
    /// [`EtcdStore`]), so this only succeeds.
    pub fn begin_batch(&mut self) -> Result<()> {
        match self {
            Self::Sqlite(s) => s.begin_batch(),
            Self::Etcd(_) => Ok(()),
        }
    }

    /// Writes made in the open batch and not yet durable (etcd: none, each is committed).
    pub fn batch_writes(&self) -> u64 {
        match self {
            Self::Sqlite(s) => s.batch_writes(),
            Self::Etcd(_) => 0,
        }
    }

    pub fn end_batch(&mut self, commit: bool) -> Result<()> {
        match self {
            Self::Sqlite(s) => s.end_batch(commit),
            Self::Etcd(_) => Ok(()),
        }
    }
}

/// Schema migrations; `PRAGMA user_version` is the number already applied. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema. Addresses are INTEGERs (host-order u32) so they sort numerically.
    "CREATE TABLE pools (
        name TEXT PRIMARY KEY NOT NULL,
        ranges TEXT NOT NULL,
        excludes TEXT NOT NULL DEFAULT '',
        external_iface TEXT,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
    );
    CREATE TABLE floating_ips (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        address INTEGER NOT NULL UNIQUE,
        pool TEXT NOT NULL REFERENCES pools(name),
        project TEXT,
        description TEXT,
        fixed_ip INTEGER UNIQUE,
        instance TEXT,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
    );
    CREATE INDEX floating_ips_pool ON floating_ips(pool, address);
    CREATE INDEX floating_ips_project ON floating_ips(project);
    CREATE TABLE quotas (
        project TEXT PRIMARY KEY NOT NULL,
        floating_ips INTEGER NOT NULL CHECK (floating_ips >= 0)
    );
    CREATE TABLE meta (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        generation INTEGER NOT NULL
    );
    INSERT INTO meta (id, generation) VALUES (0, 0);",
    // 2: the database's identity, recorded by the maps loaded from it, so that a command run
    // with another database (a typo in --state) is refused instead of "repairing" the maps.
    "ALTER TABLE meta ADD COLUMN identity INTEGER NOT NULL DEFAULT 0;
    UPDATE meta SET identity = (random() & 9223372036854775807) | 1 WHERE id = 0;",
    // 3: the agent's ports (an instance's fixed IP on an internal network, see store/ports.rs)
    // and API users (store/users.rs).
    "CREATE TABLE ports (
        id TEXT PRIMARY KEY NOT NULL,
        network TEXT NOT NULL,
        fixed_ip INTEGER NOT NULL UNIQUE,
        name TEXT NOT NULL DEFAULT '',
        device_id TEXT NOT NULL DEFAULT '',
        device_owner TEXT NOT NULL DEFAULT '',
        project TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
    );
    CREATE INDEX ports_project ON ports(project);
    CREATE TABLE users (
        name TEXT PRIMARY KEY NOT NULL,
        project TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'member')),
        password_hash TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
    );",
    // 4: editable descriptions of pools, and tags of floating IPs (store/tags.rs). Tags go
    // with their address: deleting it deletes them.
    "ALTER TABLE pools ADD COLUMN description TEXT;
    CREATE TABLE floating_ip_tags (
        floating_ip INTEGER NOT NULL REFERENCES floating_ips(id) ON DELETE CASCADE,
        tag TEXT NOT NULL,
        PRIMARY KEY (floating_ip, tag)
    ) WITHOUT ROWID;",
];

/// The tables of the current schema; a database holding other tables is not floatip's.
const TABLES: &[&str] = &[
    "floating_ip_tags",
    "floating_ips",
    "meta",
    "pools",
    "ports",
    "quotas",
    "users",
];

/// A pool as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolRow {
    pub name: String,
    /// Canonical text of [`crate::addr::PoolRanges::ranges_text`].
    pub ranges: String,
    pub excludes: String,
    pub external_iface: Option<String>,
    pub description: Option<String>,
    pub created_at: String,
}

/// A floating IP as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FloatingIpRow {
    pub id: i64,
    pub address: Ipv4Addr,
    pub pool: String,
    pub project: Option<String>,
    pub description: Option<String>,
    pub fixed_ip: Option<Ipv4Addr>,
    pub instance: Option<String>,
    /// Sorted.
    pub tags: Vec<String>,
    pub created_at: String,
}

/// Filter of [`SqliteTx::ip_list`]; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct IpFilter<'a> {
    pub pool: Option<&'a str>,
    pub project: Option<&'a str>,
    pub associated: Option<bool>,
    pub address: Option<Ipv4Addr>,
    pub fixed_ip: Option<Ipv4Addr>,
    pub instance: Option<&'a str>,
}

/// Usage and limit of one project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaRow {
    pub project: String,
    pub used: u64,
    /// `None`: no quota set, unlimited.
    pub limit: Option<u32>,
}

/// A connection to the state database.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// On a read-only filesystem: [`Self::write`] refuses.
    read_only: bool,
    /// While a batch is open: the writes made in it so far.
    batch: Option<u64>,
}

/// What a [`SqliteTx`] runs in: a transaction of its own, or a savepoint of the open batch.
enum Scope<'c> {
    Transaction(rusqlite::Transaction<'c>),
    Savepoint(rusqlite::Savepoint<'c>),
}

impl std::ops::Deref for Scope<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Scope::Transaction(t) => t,
            Scope::Savepoint(s) => s,
        }
    }
}

impl Scope<'_> {
    /// Commits the transaction, or releases the savepoint into the batch.
    fn commit(self) -> rusqlite::Result<()> {
        match self {
            Scope::Transaction(t) => t.commit(),
            Scope::Savepoint(s) => s.commit(),
        }
    }
}

fn ip_to_sql(ip: Ipv4Addr) -> i64 {
    i64::from(u32::from(ip))
}

fn ip_from_sql(v: i64) -> rusqlite::Result<Ipv4Addr> {
    u32::try_from(v)
        .map(Ipv4Addr::from)
        .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, v))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`: parent directory 0700, file 0600, WAL,
    /// a 5 s busy timeout, foreign keys on, schema migrated to the current version.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path, true)
            .map_err(|e| disk_full(e, path))
            .with_context(|| format!("cannot open state database {}", path.display()))
    }

    /// [`Self::open`] of a database that must exist already: never creates one.
    pub fn open_existing(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("there is no state database at {}", path.display());
        }
        Self::open_inner(path, false)
            .map_err(|e| disk_full(e, path))
            .with_context(|| format!("cannot open state database {}", path.display()))
    }

    fn open_inner(path: &Path, create: bool) -> Result<Self> {
        if path.exists() && on_read_only_fs(path) {
            return Self::open_read_only(path);
        }
        if create && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Only directories created here get 0700; an existing one is left as the admin set it.
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        // Create the file ourselves so it is 0600 from the first byte (SQLite would use 0644);
        // SQLite gives the -wal and -shm files the same mode.
        if create {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // Before anything is written (WAL mode is a write): refuse what is not ours.
        check_schema(&conn)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("cannot switch to WAL mode (journal mode is {mode})");
        }
        conn.pragma_update(None, "foreign_keys", true)?;
        let mut store = Self {
            conn,
            path: path.to_owned(),
            read_only: false,
            batch: None,
        };
        store.migrate()?;
        Ok(store)
    }

    /// A database on a read-only filesystem: reading commands work, writing ones are refused
    /// in one line. `immutable` because no writer can exist there (and SQLite could not create
    /// the WAL's shared memory beside it).
    fn open_read_only(path: &Path) -> Result<Self> {
        use rusqlite::OpenFlags;
        let uri = format!("file:{}?immutable=1", path.display());
        let conn = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )?;
        check_schema(&conn)?;
        let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != MIGRATIONS.len() as u32 {
            bail!(
                "it is on a read-only filesystem and has schema version {version}, not {}: open it \
                 writable once to upgrade it",
                MIGRATIONS.len()
            );
        }
        Ok(Self {
            conn,
            path: path.to_owned(),
            read_only: true,
            batch: None,
        })
    }

    /// `PRAGMA quick_check`: a damaged file is refused in one line instead of failing some
    /// later query half way through a command.
    pub fn check_integrity(&mut self) -> Result<()> {
        let verdict: String = self
            .conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
        if verdict != "ok" {
            bail!(
                "state database {} is corrupt: {verdict}",
                self.path.display()
            );
        }
        Ok(())
    }

    /// The identity the database got when it was created (see migration 2).
    pub fn identity(&mut self) -> Result<u64> {
        self.read(|tx| tx.identity())
    }

    fn migrate(&mut self) -> Result<()> {
        let latest = MIGRATIONS.len() as u32;
        let version = |c: &Connection| -> rusqlite::Result<u32> {
            c.query_row("PRAGMA user_version", [], |r| r.get(0))
        };
        if version(&self.conn)? == latest {
            return Ok(());
        }
        // Re-read under the write lock: another process may have migrated meanwhile.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = version(&tx)?;
        if current > latest {
            bail!(
                "schema version {current} is newer than this floatip supports ({latest}); upgrade floatip"
            );
        }
        for sql in &MIGRATIONS[current as usize..] {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", latest)?;
        tx.commit()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a read transaction: a consistent snapshot, no lock held against writers. In
    /// a batch, a savepoint of it, which sees the batch's changes so far.
    pub fn read<T>(&mut self, f: impl FnOnce(&SqliteTx<'_>) -> Result<T>) -> Result<T> {
        let scope = if self.batch.is_some() {
            Scope::Savepoint(self.conn.savepoint()?)
        } else {
            Scope::Transaction(
                self.conn
                    .transaction_with_behavior(TransactionBehavior::Deferred)?,
            )
        };
        f(&SqliteTx::new(scope))
        // Dropping the transaction ends it; nothing was written.
    }

    /// Opens a batch: one `BEGIN IMMEDIATE` transaction that every [`Self::read`] and
    /// [`Self::write`] joins as a savepoint until [`Self::end_batch`]. What they change is
    /// durable only once the batch commits.
    pub fn begin_batch(&mut self) -> Result<()> {
        if self.read_only {
            bail!("the state database is read-only");
        }
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .context("cannot lock the state database")?;
        self.batch = Some(0);
        Ok(())
    }

    /// Writes made in the open batch so far (a failed one counts): while none, nothing read
    /// in it can be undone by its commit failing.
    pub fn batch_writes(&self) -> u64 {
        self.batch.unwrap_or(0)
    }

    /// Commits the open batch (with `commit`) or rolls it back; a failed commit rolls back.
    pub fn end_batch(&mut self, commit: bool) -> Result<()> {
        if self.batch.take().is_none() {
            return Ok(());
        }
        let committed = if commit {
            self.conn
                .execute_batch("COMMIT")
                .context("cannot commit to the state database")
                .map_err(|e| disk_full(e, &self.path))
        } else {
            Ok(())
        };
        if (!commit || committed.is_err()) && !self.conn.is_autocommit() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        committed
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits only if `f` succeeds; any error
    /// rolls everything back. `f` may do other work (map updates) that must succeed for the
    /// transaction to commit.
    pub fn write<T>(&mut self, f: impl FnOnce(&SqliteTx<'_>) -> Result<T>) -> Result<T> {
        let path = self.path.clone();
        self.write_inner(f).map_err(|e| disk_full(e, &path))
    }

    fn write_inner<T>(&mut self, f: impl FnOnce(&SqliteTx<'_>) -> Result<T>) -> Result<T> {
        if self.read_only {
            bail!(
                "the state database {} is on a read-only filesystem; this command changes it",
                self.path.display()
            );
        }
        let scope = if let Some(writes) = &mut self.batch {
            *writes += 1;
            Scope::Savepoint(self.conn.savepoint()?)
        } else {
            Scope::Transaction(
                self.conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .context("cannot lock the state database")?,
            )
        };
        let tx = SqliteTx::new(scope);
        let value = f(&tx)?;
        tx.tx
            .commit()
            .context("cannot commit to the state database")?;
        Ok(value)
    }
}

/// An SQLite error that comes of a full filesystem, as one line that says so. SQLite reports
/// ENOSPC as SQLITE_FULL when the database or WAL grows, but as an I/O or open error when the
/// WAL's shared-memory file cannot be created: those are told apart by the free space left.
fn disk_full(err: anyhow::Error, path: &Path) -> anyhow::Error {
    use rusqlite::ErrorCode;
    let code = err
        .chain()
        .find_map(|e| match e.downcast_ref::<rusqlite::Error>() {
            Some(rusqlite::Error::SqliteFailure(f, _)) => Some(f.code),
            _ => None,
        });
    let full = match code {
        Some(ErrorCode::DiskFull) => true,
        Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => no_space_left(path),
        _ => false,
    };
    if full {
        anyhow::anyhow!(
            "disk full: cannot write the state database {}",
            path.display()
        )
    } else {
        err
    }
}

/// Whether `path` lies on a filesystem mounted read-only.
fn on_read_only_fs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs to fill.
    unsafe { libc::statvfs(c.as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_RDONLY != 0 }
}

/// Whether the filesystem holding `path` has no block left for an unprivileged writer... or
/// for root (whose reserve tmpfs does not keep).
fn no_space_left(path: &Path) -> bool {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_bfree == 0 || st.f_bavail == 0
}

/// Refuses a file that SQLite can read but that is not a floatip database, or one of a newer
/// schema, before anything is written to it.
fn check_schema(conn: &Connection) -> Result<()> {
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = MIGRATIONS.len() as u32;
    if version > latest {
        bail!(
            "schema version {version} is newer than this floatip supports ({latest}); upgrade floatip"
        );
    }
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let foreign = if version == 0 {
        // Not yet migrated: only an empty file is ours to take.
        !tables.is_empty()
    } else {
        tables.iter().any(|t| !TABLES.contains(&t.as_str()))
    };
    if foreign {
        bail!("it is not a floatip state database (it holds other tables)");
    }
    Ok(())
}

/// An open transaction: every query and mutation of the state.
pub struct SqliteTx<'c> {
    tx: Scope<'c>,
    /// Whether this transaction already bumped the generation: once is enough.
    bumped: Cell<bool>,
}

/// A floating IP's columns; the last is its tags joined by newlines (which a tag never
/// holds; see store/tags.rs), so a listing needs no second query.
const IP_COLUMNS: &str = "id, address, pool, project, description, fixed_ip, instance, created_at,
    (SELECT group_concat(tag, char(10) ORDER BY tag) FROM floating_ip_tags t
     WHERE t.floating_ip = floating_ips.id)";

fn ip_row(r: &Row<'_>) -> rusqlite::Result<FloatingIpRow> {
    Ok(FloatingIpRow {
        id: r.get(0)?,
        address: ip_from_sql(r.get(1)?)?,
        pool: r.get(2)?,
        project: r.get(3)?,
        description: r.get(4)?,
        fixed_ip: r.get::<_, Option<i64>>(5)?.map(ip_from_sql).transpose()?,
        instance: r.get(6)?,
        created_at: r.get(7)?,
        tags: tags::split(r.get(8)?),
    })
}

const POOL_COLUMNS: &str = "name, ranges, excludes, external_iface, description, created_at";

fn pool_row(r: &Row<'_>) -> rusqlite::Result<PoolRow> {
    Ok(PoolRow {
        name: r.get(0)?,
        ranges: r.get(1)?,
        excludes: r.get(2)?,
        external_iface: r.get(3)?,
        description: r.get(4)?,
        created_at: r.get(5)?,
    })
}

impl<'c> SqliteTx<'c> {
    fn new(tx: Scope<'c>) -> Self {
        Self {
            tx,
            bumped: Cell::new(false),
        }
    }

    /// Marks the transaction as changing associations (see [`Self::generation`]).
    fn bump_generation(&self) -> Result<()> {
        if !self.bumped.replace(true) {
            self.tx.execute(
                "UPDATE meta SET generation = generation + 1 WHERE id = 0",
                [],
            )?;
        }
        Ok(())
    }

    /// Generation of the associations: bumped once by every transaction that changes them, so
    /// the data plane can tell whether its maps reflect this state. Inside a transaction that
    /// changed associations, the value it will commit.
    pub fn generation(&self) -> Result<u64> {
        let g: i64 = self
            .tx
            .query_row("SELECT generation FROM meta WHERE id = 0", [], |r| r.get(0))?;
        Ok(g as u64)
    }

    /// The database's identity: non-zero, fixed at creation.
    pub fn identity(&self) -> Result<u64> {
        let id: i64 = self
            .tx
            .query_row("SELECT identity FROM meta WHERE id = 0", [], |r| r.get(0))?;
        Ok(id as u64)
    }

    // --- pools ---

    pub fn pool_insert(
        &self,
        name: &str,
        ranges: &str,
        excludes: &str,
        external_iface: Option<&str>,
        description: Option<&str>,
    ) -> Result<PoolRow> {
        self.tx.execute(
            "INSERT INTO pools (name, ranges, excludes, external_iface, description) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, ranges, excludes, external_iface, description],
        )?;
        Ok(self.pool_get(name)?.expect("just inserted"))
    }

    pub fn pool_get(&self, name: &str) -> Result<Option<PoolRow>> {
        Ok(self
            .tx
            .prepare_cached(&format!("SELECT {POOL_COLUMNS} FROM pools WHERE name = ?1"))?
            .query_row([name], pool_row)
            .optional()?)
    }

    pub fn pool_list(&self) -> Result<Vec<PoolRow>> {
        let mut stmt = self
            .tx
            .prepare_cached(&format!("SELECT {POOL_COLUMNS} FROM pools ORDER BY name"))?;
        let rows = stmt
            .query_map([], pool_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Sets (or with `None` clears) the pool's description; false if there is no such pool.
    pub fn pool_set_description(&self, name: &str, description: Option<&str>) -> Result<bool> {
        Ok(self.tx.execute(
            "UPDATE pools SET description = ?2 WHERE name = ?1",
            params![name, description],
        )? > 0)
    }

    /// Deletes a pool; false if there was none. Fails (foreign key) while it has addresses.
    pub fn pool_delete(&self, name: &str) -> Result<bool> {
        Ok(self
            .tx
            .execute("DELETE FROM pools WHERE name = ?1", [name])?
            > 0)
    }

    // --- floating IPs ---

    /// Allocates `address` from `pool`.
    pub fn ip_insert(
        &self,
        address: Ipv4Addr,
        pool: &str,
        project: Option<&str>,
        description: Option<&str>,
    ) -> Result<FloatingIpRow> {
        self.tx.execute(
            "INSERT INTO floating_ips (address, pool, project, description) VALUES (?1, ?2, ?3, ?4)",
            params![ip_to_sql(address), pool, project, description],
        )?;
        Ok(self.ip_get(address)?.expect("just inserted"))
    }

    pub fn ip_get(&self, address: Ipv4Addr) -> Result<Option<FloatingIpRow>> {
        Ok(self
            .tx
            .prepare_cached(&format!(
                "SELECT {IP_COLUMNS} FROM floating_ips WHERE address = ?1"
            ))?
            .query_row([ip_to_sql(address)], ip_row)
            .optional()?)
    }

    /// The floating IP associated with `fixed`, if any.
    pub fn ip_by_fixed(&self, fixed: Ipv4Addr) -> Result<Option<FloatingIpRow>> {
        Ok(self
            .tx
            .prepare_cached(&format!(
                "SELECT {IP_COLUMNS} FROM floating_ips WHERE fixed_ip = ?1"
            ))?
            .query_row([ip_to_sql(fixed)], ip_row)
            .optional()?)
    }

    pub fn ip_list(&self, filter: &IpFilter<'_>) -> Result<Vec<FloatingIpRow>> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "SELECT {IP_COLUMNS} FROM floating_ips
             WHERE (?1 IS NULL OR pool = ?1) AND (?2 IS NULL OR project = ?2)
               AND (?3 IS NULL OR (fixed_ip IS NOT NULL) = ?3)
               AND (?4 IS NULL OR address = ?4) AND (?5 IS NULL OR fixed_ip = ?5)
               AND (?6 IS NULL OR instance = ?6)
             ORDER BY address"
        ))?;
        let rows = stmt
            .query_map(
                params![
                    filter.pool,
                    filter.project,
                    filter.associated,
                    filter.address.map(ip_to_sql),
                    filter.fixed_ip.map(ip_to_sql),
                    filter.instance
                ],
                ip_row,
            )?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Allocated addresses of `pool`, ascending (what [`crate::addr::PoolRanges::lowest_free`]
    /// wants).
    pub fn ip_addresses_in_pool(&self, pool: &str) -> Result<Vec<Ipv4Addr>> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT address FROM floating_ips WHERE pool = ?1 ORDER BY address")?;
        let rows = stmt
            .query_map([pool], |r| ip_from_sql(r.get(0)?))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn ip_count_in_pool(&self, pool: &str) -> Result<u64> {
        let n: i64 = self
            .tx
            .prepare_cached("SELECT COUNT(*) FROM floating_ips WHERE pool = ?1")?
            .query_row([pool], |r| r.get(0))?;
        Ok(n as u64)
    }

    pub fn ip_count_for_project(&self, project: &str) -> Result<u64> {
        let n: i64 = self
            .tx
            .prepare_cached("SELECT COUNT(*) FROM floating_ips WHERE project = ?1")?
            .query_row([project], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Sets (or with `None`, clears) the association of `address`; bumps the generation.
    pub fn ip_set_association(
        &self,
        address: Ipv4Addr,
        fixed: Option<Ipv4Addr>,
        instance: Option<&str>,
    ) -> Result<()> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE floating_ips SET fixed_ip = ?2, instance = ?3 WHERE address = ?1",
            )?
            .execute(params![ip_to_sql(address), fixed.map(ip_to_sql), instance])?;
        if n == 0 {
            bail!("floating IP {address} not found");
        }
        self.bump_generation()
    }

    /// Releases `address`; bumps the generation if it was associated. False if there was none.
    pub fn ip_delete(&self, address: Ipv4Addr) -> Result<bool> {
        let Some(row) = self.ip_get(address)? else {
            return Ok(false);
        };
        self.tx.execute(
            "DELETE FROM floating_ips WHERE address = ?1",
            [ip_to_sql(address)],
        )?;
        if row.fixed_ip.is_some() {
            self.bump_generation()?;
        }
        Ok(true)
    }

    /// Every association, as (floating, fixed).
    pub fn associations(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT address, fixed_ip FROM floating_ips WHERE fixed_ip IS NOT NULL ORDER BY address")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((ip_from_sql(r.get(0)?)?, ip_from_sql(r.get(1)?)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    // --- quotas ---

    pub fn quota_set(&self, project: &str, floating_ips: u32) -> Result<()> {
        self.tx.execute(
            "INSERT INTO quotas (project, floating_ips) VALUES (?1, ?2)
             ON CONFLICT (project) DO UPDATE SET floating_ips = excluded.floating_ips",
            params![project, floating_ips],
        )?;
        Ok(())
    }

    /// The project's limit; `None` when no quota is set (unlimited).
    pub fn quota_get(&self, project: &str) -> Result<Option<u32>> {
        Ok(self
            .tx
            .prepare_cached("SELECT floating_ips FROM quotas WHERE project = ?1")?
            .query_row([project], |r| r.get(0))
            .optional()?)
    }

    /// Usage and limit of every project that has a quota or a floating IP.
    pub fn quota_list(&self) -> Result<Vec<QuotaRow>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT p,
                    (SELECT COUNT(*) FROM floating_ips f WHERE f.project = p),
                    (SELECT floating_ips FROM quotas q WHERE q.project = p)
             FROM (SELECT project AS p FROM quotas
                   UNION SELECT project FROM floating_ips WHERE project IS NOT NULL)
             ORDER BY p",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(QuotaRow {
                    project: r.get(0)?,
                    used: r.get::<_, i64>(1)? as u64,
                    limit: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

/// A fresh directory under the system temp dir, removed on drop (tests only; avoids a
/// dev-dependency).
#[cfg(test)]
pub(crate) struct TempDir(pub PathBuf);

#[cfg(test)]
impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("floatip-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn open(dir: &TempDir) -> SqliteStore {
        SqliteStore::open(&dir.0.join("state/state.db")).unwrap()
    }

    // What both backends must do (allocation, constraints, generation, quotas, races) is
    // tested once for both: tests/tests/store_conformance.rs.

    #[test]
    fn store_spec_parses_urls_and_paths() {
        let etcd = |e: &[&str]| StoreSpec::Etcd(e.iter().map(|s| (*s).to_owned()).collect());
        let ok = |s: &str| StoreSpec::parse(s).unwrap();
        assert_eq!(ok("etcd://127.0.0.1:2379"), etcd(&["127.0.0.1:2379"]));
        assert_eq!(
            ok("etcd://a.example:1,10.0.0.2:2379/"),
            etcd(&["a.example:1", "10.0.0.2:2379"])
        );
        assert_eq!(ok("etcd://[::1]:2379"), etcd(&["[::1]:2379"]));
        assert_eq!(
            ok("/var/lib/floatip/state.db"),
            StoreSpec::Sqlite("/var/lib/floatip/state.db".into())
        );
        assert_eq!(ok("sqlite:rel.db"), StoreSpec::Sqlite("rel.db".into()));
        assert_eq!(ok("sqlite:///abs.db"), StoreSpec::Sqlite("/abs.db".into()));
        let bad = |s: &str| format!("{:#}", StoreSpec::parse(s).unwrap_err());
        for (s, needle) in [
            ("etcd://", "is not HOST:PORT"),
            ("etcd://h", "is not HOST:PORT"),
            ("etcd://h:0", "is not HOST:PORT"),
            ("etcd://h:1,", "is not HOST:PORT"),
            ("etcd://h:x", "is not HOST:PORT"),
            ("etcd://h h:1", "is not HOST:PORT"),
            ("http://h:1", "unknown store scheme \"http\""),
            ("sqlite:", "needs a path"),
            ("", "empty store"),
        ] {
            let e = bad(s);
            assert!(e.contains(needle), "{s:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        assert_eq!(etcd(&["h:1", "g:2"]).to_string(), "etcd://h:1,g:2");
    }

    #[test]
    fn creates_private_files_and_schema() {
        let dir = TempDir::new("store-open");
        let store = open(&dir);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.0.join("state")), 0o700);
        assert_eq!(mode(store.path()), 0o600);
        let v: u32 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as u32);
        let jm: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(jm, "wal");
        drop(store);
        // Reopening is a no-op migration and keeps data.
        let mut store = open(&dir);
        assert_eq!(store.read(|tx| tx.generation()).unwrap(), 0);
        // A newer schema is refused.
        store.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(store);
        let e = format!(
            "{:#}",
            SqliteStore::open(&dir.0.join("state/state.db"))
                .err()
                .unwrap()
        );
        assert!(e.contains("schema version 99 is newer"), "{e}");
    }

    #[test]
    fn migration_4_keeps_rows_and_tags_go_with_their_address() {
        let dir = TempDir::new("store-tags");
        let path = dir.0.join("state.db");
        // A database as floatip left it before migration 4.
        let conn = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 3;
             INSERT INTO pools (name, ranges) VALUES ('public', '203.0.113.0/24');
             INSERT INTO floating_ips (address, pool) VALUES (3405803781, 'public');",
        )
        .unwrap();
        drop(conn);
        let mut store = SqliteStore::open(&path).unwrap();
        let row = store
            .read(|tx| tx.ip_get(ip("203.0.113.5")))
            .unwrap()
            .unwrap();
        assert!(row.tags.is_empty());
        assert_eq!(
            store
                .read(|tx| tx.pool_get("public"))
                .unwrap()
                .unwrap()
                .description,
            None
        );
        let tags = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        store
            .write(|tx| tx.ip_tags_add(row.id, &tags(&["web", "blue", "web"])))
            .unwrap();
        let listed = store.read(|tx| tx.ip_list(&IpFilter::default())).unwrap();
        assert_eq!(listed[0].tags, ["blue", "web"], "sorted, once each");
        store
            .write(|tx| tx.ip_tags_remove(row.id, Some(&tags(&["blue", "absent"]))))
            .unwrap();
        assert_eq!(
            store
                .read(|tx| tx.ip_get_by_id(row.id))
                .unwrap()
                .unwrap()
                .tags,
            ["web"]
        );
        store.write(|tx| tx.ip_delete(row.address)).unwrap();
        let left: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM floating_ip_tags", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0, "deleting the address deletes its tags");
    }
}
