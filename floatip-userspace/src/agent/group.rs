//! `floatip agent --gateway NAME`: this gateway's part in a group sharing its state in etcd.
//!
//! Three threads, each with a current-thread runtime and an etcd connection of its own:
//! - **the lease thread** keeps this gateway's lease alive (a keep-alive every TTL/3) and,
//!   with each answered one, moves the data plane's fence ([`Fence::renew`]) to what the lease
//!   is known to live yet: (send time of that keep-alive) + TTL − margin. etcd can expire the
//!   lease no earlier than the TTL after that send, and only then can another gateway own a
//!   pool of ours, so we have stopped answering by then, whatever this agent is doing (or if
//!   it is dead). It is a thread of its own so that no long job of the control thread (a full
//!   resync of 100,000 pairs) delays a keep-alive.
//! - **the apply thread** watches the state from the revision it last applied and hands every
//!   change to the control thread ([`Control::group_apply`]), so that this gateway's maps hold
//!   every association whichever gateway's API made it. It resumes after a broken watch from
//!   the last revision applied and resyncs in full at start and when that history was
//!   compacted. Its own thread, so that nothing ownership waits for delays a change.
//! - **the member thread** does the rest, every 100 ms:
//!   - *publish* the revision applied on its live key (a floating IP is ACTIVE once every
//!     live gateway has published its revision);
//!   - *own*: each pool is owned by the live gateway its name hashes to
//!     ([`preferred_owner`]); the owner key is created with the owner's lease, so it vanishes
//!     when the owner dies, and the next preferred gateway takes it and announces it. A
//!     gateway that is no longer preferred (another one came back) first stops answering,
//!     then deletes its key.
//!   - *fence*: when the lease is no longer known alive it drops ownership itself too (the
//!     tenant addresses are the kernel's, which the data plane's fence does not cover).
//!
//! With etcd unreachable the maps keep the last state applied and forwarding goes on; only
//! ownership stops (at the fence), as it must, since another gateway may own the pools by then.
//!
//! [`Control::group_apply`]: crate::control::Control::group_apply

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{Worker, config::GroupConfig};
use crate::{
    control::{Fence, TenantGateway, preferred_owner},
    store::{Change, GroupClient, Lease, PoolRow, StateEvent, StateWatch},
};

/// How often ownership is reconsidered and the fence checked.
const TICK: Duration = Duration::from_millis(100);

/// The lease and since when it is known alive, shared by the two threads.
#[derive(Default)]
struct LeaseState {
    lease: Option<Lease>,
    /// When the last keep-alive that was answered (or the grant) was sent.
    alive_since: Option<Instant>,
}

impl LeaseState {
    /// How long the lease is known to live yet, less a margin for clocks and for the time it
    /// takes to stop answering; zero: no longer.
    fn left(&self, ttl: Duration) -> Duration {
        let margin = (ttl / 4).max(Duration::from_millis(200));
        match (self.lease, self.alive_since) {
            (Some(lease), Some(t)) => lease.ttl.saturating_sub(margin + t.elapsed()),
            _ => Duration::ZERO,
        }
    }
}

type Shared = Arc<Mutex<LeaseState>>;

/// What the apply thread has brought the maps to, for the member thread.
#[derive(Default)]
struct ApplyState {
    /// The revision the maps reflect; `None` until the first full sync.
    applied: Option<i64>,
    pools: BTreeMap<String, PoolRow>,
}

type Applied = Arc<Mutex<ApplyState>>;

fn lock_applied(s: &Applied) -> std::sync::MutexGuard<'_, ApplyState> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, LeaseState> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running threads: [`Self::stop`] gives up ownership and the lease.
pub struct GroupTask {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("floatip agent: group: cannot start a runtime: {e}");
            None
        }
    }
}

impl GroupTask {
    pub fn start(
        config: GroupConfig,
        endpoints: Vec<String>,
        bpffs: PathBuf,
        worker: Worker,
        synced_at: Option<(i64, Vec<PoolRow>)>,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared: Shared = Arc::default();
        let (flag, state, ttl, eps) = (
            stop.clone(),
            shared.clone(),
            config.lease_ttl,
            endpoints.clone(),
        );
        let member_bpffs = bpffs.clone();
        let lease = std::thread::Builder::new()
            .name("floatip-lease".into())
            .spawn(move || {
                if let Some(rt) = runtime() {
                    rt.block_on(keep_alive(eps, ttl, bpffs, state, flag));
                }
            })?;
        let applied: Applied = Arc::default();
        if let Some((revision, pools)) = synced_at {
            // The attach at start has just brought the maps to this revision.
            let mut a = lock_applied(&applied);
            a.applied = Some(revision);
            a.pools = pools.into_iter().map(|p| (p.name.clone(), p)).collect();
        }
        let (flag, state, eps, w) = (
            stop.clone(),
            applied.clone(),
            endpoints.clone(),
            worker.clone(),
        );
        let apply = std::thread::Builder::new()
            .name("floatip-apply".into())
            .spawn(move || {
                if let Some(rt) = runtime() {
                    rt.block_on(Applier::new(eps, w, state).run(flag));
                }
            })?;
        let flag = stop.clone();
        let member = std::thread::Builder::new()
            .name("floatip-group".into())
            .spawn(move || {
                if let Some(rt) = runtime() {
                    let member =
                        Member::new(config, endpoints, &member_bpffs, worker, shared, applied);
                    rt.block_on(member.run(flag));
                }
            })?;
        Ok(Self {
            stop,
            threads: vec![member, apply, lease],
        })
    }

    /// Stops answering, releases the pools (by revoking the lease, so the others take over at
    /// once) and waits for the threads.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The lease thread (see the module).
async fn keep_alive(
    endpoints: Vec<String>,
    ttl: Duration,
    bpffs: PathBuf,
    state: Shared,
    stop: Arc<AtomicBool>,
) {
    let mut fence = Fence::new(&bpffs);
    let mut client: Option<GroupClient> = None;
    let mut last_error = String::new();
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(ttl / 3).await;
        let Some(lease) = lock(&state).lease else {
            continue;
        };
        let sent = Instant::now();
        let answered = async {
            if client.is_none() {
                client = Some(GroupClient::connect(&endpoints).await?);
            }
            client
                .as_mut()
                .expect("connected above")
                .keep_alive(lease, ttl / 3)
                .await
        }
        .await;
        match answered {
            Ok(ttl_left) if ttl_left > 0 => {
                let left = {
                    let mut s = lock(&state);
                    if s.lease.map(|l| l.id) == Some(lease.id) {
                        s.alive_since = Some(sent);
                    }
                    s.left(ttl)
                };
                if let Err(e) = fence.renew(left) {
                    eprintln!("floatip agent: group: cannot renew the fence: {e:#}");
                }
                last_error.clear();
            }
            other => {
                let e = match other {
                    Err(e) => format!("{e:#}"),
                    Ok(_) => "lease not found".to_owned(),
                };
                if e.contains("lease not found") {
                    // Expired while we were cut off: the member thread joins again.
                    let mut s = lock(&state);
                    if s.lease.map(|l| l.id) == Some(lease.id) {
                        *s = LeaseState::default();
                    }
                }
                if e != last_error {
                    eprintln!("floatip agent: group: keep-alive: {e}");
                    last_error = e;
                }
            }
        }
    }
}

struct Member {
    name: String,
    ttl: Duration,
    tenant: Vec<TenantGateway>,
    endpoints: Vec<String>,
    worker: Worker,
    shared: Shared,
    /// Set once at joining, so that the pools claimed right after are answered before the
    /// lease thread's first keep-alive.
    fence: Fence,
    client: Option<GroupClient>,
    /// The lease this thread last saw (a new one means joining again).
    lease: Option<Lease>,
    applied: Applied,
    reported: i64,
    /// What the data plane answers for now.
    owned: BTreeSet<String>,
    /// Since when each pool has had no owner (a preferred gateway that never claims it is
    /// passed over after a while).
    unowned_since: BTreeMap<String, Instant>,
    last_error: String,
}

impl Member {
    fn new(
        config: GroupConfig,
        endpoints: Vec<String>,
        bpffs: &std::path::Path,
        worker: Worker,
        shared: Shared,
        applied: Applied,
    ) -> Self {
        Self {
            fence: Fence::new(bpffs),
            name: config.gateway,
            ttl: config.lease_ttl,
            tenant: config.tenant,
            endpoints,
            worker,
            shared,
            client: None,
            lease: None,
            applied,
            reported: 0,
            owned: BTreeSet::new(),
            unowned_since: BTreeMap::new(),
            last_error: String::new(),
        }
    }

    /// Says what went wrong once, not every tick.
    fn report(&mut self, what: &str, e: &anyhow::Error) {
        let text = format!("{what}: {e:#}");
        if text != self.last_error {
            eprintln!("floatip agent: group: {text}");
            self.last_error = text;
        }
    }

    async fn run(mut self, stop: Arc<AtomicBool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Tenant addresses a killed agent left behind go before anything else.
        if let Err(e) = self.own(BTreeSet::new()).await {
            self.report("cannot clear what an earlier run answered for", &e);
        }
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            self.step().await;
        }
        self.leave().await;
    }

    async fn leave(&mut self) {
        if let Err(e) = self.own(BTreeSet::new()).await {
            self.report("cannot stop answering", &e);
        }
        let lease = std::mem::take(&mut *lock(&self.shared)).lease;
        if let (Some(client), Some(lease)) = (self.client.as_mut(), lease) {
            let _ = client.leave(lease).await;
        }
        eprintln!("floatip agent: group: {} left the group", self.name);
    }

    async fn heartbeat(&mut self) {
        let applied = lock_applied(&self.applied).applied;
        let (Some(client), Some(lease), Some(applied)) =
            (self.client.as_mut(), self.lease, applied)
        else {
            return;
        };
        if applied == self.reported {
            return;
        }
        match client.heartbeat(&self.name, lease, applied).await {
            Ok(()) => self.reported = applied,
            Err(e) => self.report("cannot publish the applied revision", &e),
        }
    }

    fn answering_allowed(&self) -> bool {
        !lock(&self.shared).left(self.ttl).is_zero()
    }

    async fn step(&mut self) {
        self.fence().await;
        if let Err(e) = self.try_step().await {
            self.report("etcd", &e);
        }
        self.fence().await;
    }

    async fn try_step(&mut self) -> Result<()> {
        if self.client.is_none() {
            self.client = Some(GroupClient::connect(&self.endpoints).await?);
        }
        let Some(applied) = lock_applied(&self.applied).applied else {
            // Not synced yet: nothing to own before the maps hold the state.
            return Ok(());
        };
        let current = lock(&self.shared).lease;
        if current.is_none() {
            if !self.owned.is_empty() {
                // A lease that expired: the fence has already stopped every answer.
                self.own(BTreeSet::new()).await?;
            }
            let sent = Instant::now();
            let client = self.client.as_mut().expect("connected above");
            let lease = client.join(&self.name, self.ttl, applied).await?;
            let left = {
                let mut s = lock(&self.shared);
                *s = LeaseState {
                    lease: Some(lease),
                    alive_since: Some(sent),
                };
                s.left(self.ttl)
            };
            self.fence.renew(left)?;
            self.reported = applied;
            if lease.ttl != self.ttl {
                eprintln!(
                    "floatip agent: group: etcd granted a lease of {:?}, not {:?}",
                    lease.ttl, self.ttl
                );
            }
            eprintln!(
                "floatip agent: group: {} joined (lease {:?}, revision {applied})",
                self.name, lease.ttl
            );
        }
        self.lease = lock(&self.shared).lease;
        if !self.answering_allowed() {
            return Ok(());
        }
        self.reconcile().await
    }

    async fn fence(&mut self) {
        if !self.owned.is_empty() && !self.answering_allowed() {
            eprintln!(
                "floatip agent: group: {} cannot confirm its lease; no longer answering for {}",
                self.name,
                self.owned.iter().cloned().collect::<Vec<_>>().join(",")
            );
            if let Err(e) = self.own(BTreeSet::new()).await {
                self.report("cannot stop answering", &e);
            }
        }
    }

    /// Claims the pools this gateway is preferred for, gives up the ones it is not, and makes
    /// the data plane answer for what it owns.
    async fn reconcile(&mut self) -> Result<()> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let client = self.client.as_mut().expect("checked by the caller");
        let view = client.view(lease.ttl / 3).await?;
        let mut live: Vec<&str> = view.live.keys().map(String::as_str).collect();
        if !live.contains(&self.name.as_str()) {
            live.push(&self.name);
        }
        let pools: BTreeSet<String> = lock_applied(&self.applied).pools.keys().cloned().collect();
        let mut want = BTreeSet::new();
        let mut release = Vec::new();
        for pool in &pools {
            let preferred = preferred_owner(pool, live.iter().copied());
            let me = preferred == Some(self.name.as_str());
            match view.owners.get(pool) {
                Some(owner) if *owner == self.name => {
                    self.unowned_since.remove(pool);
                    // Handed over only to a preferred gateway that is alive to take it.
                    if me {
                        want.insert(pool.clone());
                    } else {
                        release.push(pool.clone());
                    }
                }
                Some(_) => {
                    self.unowned_since.remove(pool);
                }
                None => {
                    let since = *self
                        .unowned_since
                        .entry(pool.clone())
                        .or_insert_with(Instant::now);
                    // The preferred gateway claims at once; anyone else after two TTLs
                    // (one that lacks the pool's NIC, or is stuck, must not leave it
                    // unanswered).
                    if (me || since.elapsed() > lease.ttl * 2)
                        && client.claim(pool, &self.name, lease).await?
                    {
                        eprintln!("floatip agent: group: {} owns pool {pool}", self.name);
                        want.insert(pool.clone());
                    }
                }
            }
        }
        // Owner keys of pools that are gone.
        for (pool, owner) in &view.owners {
            if *owner == self.name && !pools.contains(pool) {
                release.push(pool.clone());
            }
        }
        if want != self.owned {
            self.own(want).await?;
        }
        for pool in release {
            let client = self.client.as_mut().expect("checked by the caller");
            client.release(&pool, &self.name).await?;
            eprintln!(
                "floatip agent: group: {} handed pool {pool} over",
                self.name
            );
        }
        self.heartbeat().await;
        Ok(())
    }

    /// Makes the data plane answer for `owned` (and remembers it only once it does).
    async fn own(&mut self, owned: BTreeSet<String>) -> Result<()> {
        let tenant = self.tenant.clone();
        let pools: Vec<PoolRow> = lock_applied(&self.applied)
            .pools
            .values()
            .cloned()
            .collect();
        let wanted = owned.clone();
        self.worker
            .run(move |c| c.group_own(&wanted, &pools, &tenant))
            .await?;
        self.owned = owned;
        Ok(())
    }
}

/// The apply thread (see the module): its own connection, so that nothing the member thread
/// waits for (a view, a claim) delays a change reaching the maps.
struct Applier {
    endpoints: Vec<String>,
    worker: Worker,
    state: Applied,
    client: Option<GroupClient>,
    watch: Option<StateWatch>,
    last_error: String,
}

impl Applier {
    fn new(endpoints: Vec<String>, worker: Worker, state: Applied) -> Self {
        Self {
            endpoints,
            worker,
            state,
            client: None,
            watch: None,
            last_error: String::new(),
        }
    }

    fn report(&mut self, what: &str, e: &anyhow::Error) {
        let text = format!("{what}: {e:#}");
        if text != self.last_error {
            eprintln!("floatip agent: group: {text}");
            self.last_error = text;
        }
    }

    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            if self.watch.is_none() {
                if let Err(e) = self.prepare().await {
                    self.report("state watch", &e);
                    tokio::time::sleep(TICK).await;
                }
                continue;
            }
            // Woken at least every tick to see the stop flag.
            let event = tokio::time::timeout(TICK, next_event(&mut self.watch)).await;
            if let Ok(event) = event {
                self.on_event(event).await;
            }
        }
    }

    /// Connects, resyncs in full if the maps reflect no known revision, and watches from the
    /// next one.
    async fn prepare(&mut self) -> Result<()> {
        if self.client.is_none() {
            self.client = Some(GroupClient::connect(&self.endpoints).await?);
        }
        let applied = lock_applied(&self.state).applied;
        let applied = match applied {
            Some(a) => a,
            None => {
                let (revision, pools) = self.worker.run(|c| c.group_resync()).await?;
                let mut s = lock_applied(&self.state);
                s.applied = Some(revision);
                s.pools = pools.into_iter().map(|p| (p.name.clone(), p)).collect();
                revision
            }
        };
        let client = self.client.as_mut().expect("connected above");
        self.watch = Some(client.watch_state(applied + 1).await?);
        self.last_error.clear();
        Ok(())
    }

    async fn on_event(&mut self, event: Result<StateEvent>) {
        match event {
            Ok(StateEvent::Changes { revision, changes }) => {
                let pools: Vec<(String, Option<PoolRow>)> = changes
                    .iter()
                    .filter_map(|c| match c {
                        Change::Pool { name, now, .. } => Some((name.clone(), now.clone())),
                        _ => None,
                    })
                    .collect();
                match self.worker.run(move |c| c.group_apply(&changes)).await {
                    Ok(()) => {
                        let mut s = lock_applied(&self.state);
                        s.applied = Some(revision);
                        for (name, row) in pools {
                            match row {
                                Some(row) => s.pools.insert(name, row),
                                None => s.pools.remove(&name),
                            };
                        }
                    }
                    Err(e) => {
                        self.report("cannot apply a change; resyncing", &e);
                        self.resync_later();
                    }
                }
            }
            Ok(StateEvent::Compacted) => {
                eprintln!("floatip agent: group: the history was compacted; resyncing");
                self.resync_later();
            }
            Err(e) => {
                // Resumed from the last revision applied.
                self.report("state watch", &e);
                self.watch = None;
            }
        }
    }

    fn resync_later(&mut self) {
        lock_applied(&self.state).applied = None;
        self.watch = None;
    }
}

/// The next event of `watch`, or never when there is none.
async fn next_event(watch: &mut Option<StateWatch>) -> Result<StateEvent> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
