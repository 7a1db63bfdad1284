//! `floatip agent --gateway NAME`: this gateway's part in a group sharing its state in etcd.
//!
//! One task, on a thread of its own, does three things:
//! - **apply**: it watches the state from the revision it last applied and hands every change
//!   to the control thread ([`Control::group_apply`]), so that this gateway's maps hold every
//!   association whichever gateway's API made it. It resumes after a broken watch from the
//!   last revision applied, resyncs in full when that history was compacted, and publishes
//!   the revision it has applied beside its lease.
//! - **own**: each pool is owned by the live gateway its name hashes to
//!   ([`preferred_owner`]); the owner key is created with the owner's lease, so it vanishes
//!   when the owner dies, and the next preferred gateway takes it and announces it. A
//!   gateway that is no longer preferred (one that was returned) first stops answering, then
//!   deletes its key.
//! - **fence**: a gateway answers only while it knows its lease alive: when no keep-alive
//!   has been answered for the lease's TTL minus a margin, counted from when the last
//!   answered one was sent, it stops answering for everything. etcd can expire the lease
//!   only after the TTL from that same moment, so another gateway can own a pool only after
//!   this one has stopped answering for it.
//!
//! With etcd unreachable the maps keep the last state applied and forwarding goes on; only
//! ownership stops (after the fence), as it must, since another gateway may own the pools by
//! then.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};

use super::{Worker, config::GroupConfig};
use crate::{
    control::{TenantGateway, preferred_owner},
    store::{Change, GroupClient, Lease, StateEvent, StateWatch},
};

/// How often ownership is reconsidered and the fence checked.
const TICK: Duration = Duration::from_millis(100);

/// The running task's handle: [`Self::stop`] gives up ownership and the lease.
pub struct GroupTask {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupTask {
    pub fn start(config: GroupConfig, endpoints: Vec<String>, worker: Worker) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("floatip-group".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("floatip agent: group: cannot start a runtime: {e}");
                        return;
                    }
                };
                rt.block_on(Member::new(config, endpoints, worker).run(flag));
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops answering, releases the pools (by revoking the lease, so the others take over at
    /// once) and waits for the task.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Member {
    name: String,
    ttl: Duration,
    tenant: Vec<TenantGateway>,
    endpoints: Vec<String>,
    worker: Worker,
    client: Option<GroupClient>,
    lease: Option<Lease>,
    /// When the last keep-alive that was answered was sent: the lease lives at least the TTL
    /// from then.
    alive_since: Option<Instant>,
    last_keepalive: Option<Instant>,
    watch: Option<StateWatch>,
    /// The revision the maps reflect; `None` until the first full sync.
    applied: Option<i64>,
    reported: i64,
    pools: BTreeSet<String>,
    /// What the data plane answers for now.
    owned: BTreeSet<String>,
    /// Since when each pool has had no owner (a preferred gateway that never claims it is
    /// passed over after a while).
    unowned_since: std::collections::BTreeMap<String, Instant>,
    last_error: String,
}

impl Member {
    fn new(config: GroupConfig, endpoints: Vec<String>, worker: Worker) -> Self {
        Self {
            name: config.gateway,
            ttl: config.lease_ttl,
            tenant: config.tenant,
            endpoints,
            worker,
            client: None,
            lease: None,
            alive_since: None,
            last_keepalive: None,
            watch: None,
            applied: None,
            reported: 0,
            pools: BTreeSet::new(),
            owned: BTreeSet::new(),
            unowned_since: Default::default(),
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
            tokio::select! {
                event = next_event(&mut self.watch) => self.on_event(event).await,
                _ = tick.tick() => self.step().await,
            }
        }
        self.leave().await;
    }

    async fn leave(&mut self) {
        if let Err(e) = self.own(BTreeSet::new()).await {
            self.report("cannot stop answering", &e);
        }
        if let (Some(client), Some(lease)) = (self.client.as_mut(), self.lease) {
            let _ = client.leave(lease).await;
        }
        eprintln!("floatip agent: group: {} left the group", self.name);
    }

    async fn on_event(&mut self, event: Result<StateEvent>) {
        match event {
            Ok(StateEvent::Changes { revision, changes }) => {
                for c in &changes {
                    if let Change::Pool { name, now, .. } = c {
                        if now.is_some() {
                            self.pools.insert(name.clone());
                        } else {
                            self.pools.remove(name);
                        }
                    }
                }
                let applied = self.worker.run(move |c| c.group_apply(&changes)).await;
                match applied {
                    Ok(()) => {
                        self.applied = Some(revision);
                        self.heartbeat().await;
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
                // Resumed from the last revision applied on the next tick.
                self.report("state watch", &e);
                self.watch = None;
            }
        }
    }

    fn resync_later(&mut self) {
        self.applied = None;
        self.watch = None;
    }

    async fn heartbeat(&mut self) {
        let (Some(client), Some(lease), Some(applied)) =
            (self.client.as_mut(), self.lease, self.applied)
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
        if self.applied.is_none() {
            let (revision, pools) = self.worker.run(|c| c.group_resync()).await?;
            self.applied = Some(revision);
            self.pools = pools;
            self.watch = None;
        }
        let applied = self.applied.unwrap_or(0);
        if self.watch.is_none() {
            let client = self.client.as_mut().expect("connected above");
            self.watch = Some(client.watch_state(applied + 1).await?);
        }
        if self.lease.is_none() {
            let sent = Instant::now();
            let client = self.client.as_mut().expect("connected above");
            let lease = client.join(&self.name, self.ttl, applied).await?;
            self.reported = applied;
            self.lease = Some(lease);
            self.alive_since = Some(sent);
            self.last_keepalive = Some(sent);
            self.renew().await?;
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
        let lease = self.lease.expect("set above");
        if self
            .last_keepalive
            .is_none_or(|t| t.elapsed() >= lease.ttl / 3)
        {
            let sent = Instant::now();
            self.last_keepalive = Some(sent);
            let client = self.client.as_mut().expect("connected above");
            match client.keep_alive(lease, lease.ttl / 3).await {
                Ok(ttl) if ttl > 0 => {
                    self.alive_since = Some(sent);
                    self.renew().await?;
                }
                Err(e) if !format!("{e:#}").contains("lease not found") => {
                    return Err(e.context("keep-alive"));
                }
                _ => {
                    // Expired (we were cut off for longer than the TTL): a new lease, and the
                    // fence has already stopped every answer.
                    self.lease = None;
                    self.alive_since = None;
                    self.fence().await;
                    return Err(anyhow!("the lease expired; joining again"));
                }
            }
        }
        if !self.answering_allowed() {
            return Ok(());
        }
        self.reconcile().await
    }

    /// How long the lease is known to live yet, less a margin for clocks and the time it
    /// takes to stop answering; zero: no longer.
    fn answering_left(&self) -> Duration {
        let margin = (self.ttl / 4).max(Duration::from_millis(200));
        match (self.lease, self.alive_since) {
            (Some(lease), Some(t)) => lease.ttl.saturating_sub(margin + t.elapsed()),
            _ => Duration::ZERO,
        }
    }

    fn answering_allowed(&self) -> bool {
        !self.answering_left().is_zero()
    }

    /// Moves the data plane's own fence to the end of what the lease is known to live.
    async fn renew(&mut self) -> Result<()> {
        let left = self.answering_left();
        self.worker.run(move |c| c.group_renew(left)).await
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
        let lease = self.lease.expect("checked by the caller");
        let client = self.client.as_mut().expect("checked by the caller");
        let view = client.view(lease.ttl / 3).await?;
        let mut live: Vec<&str> = view.live.keys().map(String::as_str).collect();
        if !live.contains(&self.name.as_str()) {
            live.push(&self.name);
        }
        let mut want = BTreeSet::new();
        let mut release = Vec::new();
        for pool in &self.pools {
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
            if *owner == self.name && !self.pools.contains(pool) {
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

    /// Makes the data plane answer for `pools` (and remembers it only once it does).
    async fn own(&mut self, pools: BTreeSet<String>) -> Result<()> {
        let tenant = self.tenant.clone();
        let wanted = pools.clone();
        self.worker
            .run(move |c| c.group_own(&wanted, &tenant))
            .await?;
        self.owned = pools;
        Ok(())
    }
}

/// The next event of `watch`, or never when there is none.
async fn next_event(watch: &mut Option<StateWatch>) -> Result<StateEvent> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
