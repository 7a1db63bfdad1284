//! The control thread: one [`Control`] owned by one dedicated thread, fed jobs from the
//! async handlers.
//!
//! Why a thread and not a `Mutex<Control>` with `spawn_blocking`: `Control` is neither `Sync`
//! (rusqlite) nor `Send` (it opens the maps lazily through a boxed closure), so it has to be
//! born and used on one thread. Nothing is lost by that: SQLite takes one writer at a time
//! anyway (`BEGIN IMMEDIATE`), every operation is a few map and row operations, and a queue in
//! front of one connection keeps its prepared statements warm and the request order FIFO.
//! Password hashing, the only slow step of a request, runs elsewhere (see `api/auth.rs`), and
//! so does the gratuitous ARP of an association (`garp::Announcer`).
//!
//! Group commit: the jobs queued when the thread turns to the queue run as one batch, one
//! transaction (`Control::begin_batch`), so that many changes cost one commit and one sync of
//! the WAL, the bound of a writer that answers only what is durable. A job's answer waits for
//! that commit unless nothing was written in the batch yet when the job ended; if the commit
//! fails, every waiting job gets its error. Each job's changes are savepoints, so one job's
//! failure rolls back that job alone.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use tokio::sync::oneshot;

use crate::{control::Control, garp::Announcer, store::StoreSpec};

/// Sends a job's answer: with `None` as it is, with `Some` the error of a batch that did not
/// become durable instead of a success.
type Answer = Box<dyn FnOnce(Option<&anyhow::Error>) + Send>;
type Job = Box<dyn FnOnce(&mut Control) -> Answer + Send>;

/// Most jobs in one batch: a bound on how long the first of them waits for its answer.
const MAX_BATCH: usize = 64;

/// A handle on the control thread; cheap to clone.
#[derive(Clone)]
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    stats: Arc<Stats>,
}

/// What `/metrics` shows of the control thread.
#[derive(Default)]
struct Stats {
    /// Nanoseconds the thread spent running jobs: near the wall time, the one writer is the
    /// bound.
    busy_ns: AtomicU64,
    /// Batches committed, and the jobs they held.
    batches: AtomicU64,
    batched_jobs: AtomicU64,
}

/// Identity of the pinned maps (the inode of the `META` pin): it changes when `floatip detach`
/// and `attach` replace the maps, and is `None` while detached.
fn pin_identity(bpffs: &Path) -> Option<u64> {
    std::fs::metadata(bpffs.join("maps").join(floatip_common::maps::META))
        .ok()
        .map(|m| m.ino())
}

/// Runs one job; `None` if it panicked (its answer is then dropped, so that request fails).
fn run_job(control: &mut Control, job: Job) -> Option<Answer> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(control))).ok()
}

impl Worker {
    /// Starts the thread with a control plane over `state` and `bpffs` that announces through
    /// `announcer`; fails if the state cannot be opened.
    pub fn start(state: StoreSpec, bpffs: PathBuf, announcer: Arc<Announcer>) -> Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let stats = Arc::new(Stats::default());
        let counters = stats.clone();
        thread::Builder::new()
            .name("floatip-control".into())
            .spawn(move || {
                let open = || {
                    Control::open(&state, &bpffs).map(|mut c| {
                        c.set_announcer(announcer.clone());
                        c
                    })
                };
                let mut pins = pin_identity(&bpffs);
                let mut control = match open() {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH
                        && let Ok(job) = rx.try_recv()
                    {
                        batch.push(job);
                    }
                    // The maps this control holds must be the pinned ones: after a detach and
                    // a new attach, writes to the old maps would reach no program.
                    let now = pin_identity(&bpffs);
                    if now != pins {
                        match open() {
                            Ok(c) => {
                                control = c;
                                pins = now;
                            }
                            Err(e) => eprintln!("floatip agent: cannot reopen the state: {e:#}"),
                        }
                    }
                    let started = Instant::now();
                    // A panicking job must not take the agent down: the control is opened
                    // afresh.
                    if !counters.run(&mut control, batch) {
                        eprintln!(
                            "floatip agent: a control operation panicked; reopening the state"
                        );
                        pins = None;
                    }
                    counters
                        .busy_ns
                        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            })
            .context("cannot start the control thread")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the control thread died while opening the state"))??;
        Ok(Self { jobs, stats })
    }

    /// Time the control thread has spent running jobs since it started.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.stats.busy_ns.load(Ordering::Relaxed))
    }

    /// Batches committed since the start, and the jobs they held.
    pub fn batches(&self) -> (u64, u64) {
        (
            self.stats.batches.load(Ordering::Relaxed),
            self.stats.batched_jobs.load(Ordering::Relaxed),
        )
    }

    /// Runs `f` on the control thread and returns its result once what it changed is durable.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Control) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |c| {
                let result = f(c);
                Box::new(move |failed: Option<&anyhow::Error>| {
                    let result = match (result, failed) {
                        (Ok(_), Some(e)) => Err(anyhow!("{e:#}")),
                        (r, _) => r,
                    };
                    let _ = tx.send(result);
                })
            }))
            .map_err(|_| anyhow!("the control thread has stopped"))?;
        rx.await
            .map_err(|_| anyhow!("the control thread dropped a request"))?
    }
}

impl Stats {
    /// Runs `jobs`, one alone, several as a batch; `false` if one panicked.
    fn run(&self, control: &mut Control, jobs: Vec<Job>) -> bool {
        if jobs.len() == 1 || control.begin_batch().is_err() {
            // One job commits by itself; so does each when no batch can be opened (its
            // own transaction then reports why).
            let mut ok = true;
            for job in jobs {
                match run_job(control, job) {
                    Some(answer) => answer(None),
                    None => ok = false,
                }
            }
            return ok;
        }
        let count = jobs.len() as u64;
        let mut waiting: Vec<Answer> = Vec::with_capacity(jobs.len());
        let mut panicked = false;
        for job in jobs {
            if panicked {
                // Dropped: its request fails, as the batch is rolled back.
                continue;
            }
            match run_job(control, job) {
                Some(answer) if waiting.is_empty() && !control.batch_has_writes() => answer(None),
                Some(answer) => waiting.push(answer),
                None => panicked = true,
            }
        }
        let ended = control.end_batch(!panicked);
        let failed = match (panicked, ended) {
            (true, _) => Some(anyhow!(
                "a control operation panicked; its batch of changes was rolled back"
            )),
            (false, Err(e)) => Some(e),
            (false, Ok(())) => {
                self.batches.fetch_add(1, Ordering::Relaxed);
                self.batched_jobs.fetch_add(count, Ordering::Relaxed);
                None
            }
        };
        for answer in waiting {
            answer(failed.as_ref());
        }
        !panicked
    }
}
