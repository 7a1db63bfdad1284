//! The control thread: one [`Control`] owned by one dedicated thread, fed jobs from the
//! async handlers.
//!
//! Why a thread and not a `Mutex<Control>` with `spawn_blocking`: `Control` is neither `Sync`
//! (rusqlite) nor `Send` (it opens the maps lazily through a boxed closure), so it has to be
//! born and used on one thread. Nothing is lost by that: SQLite takes one writer at a time
//! anyway (`BEGIN IMMEDIATE`), every operation is a few map and row operations, and a queue in
//! front of one connection keeps its prepared statements warm and the request order FIFO.
//! Password hashing, the only slow step of a request, runs elsewhere (see `api/auth.rs`).

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

use crate::control::Control;

type Job = Box<dyn FnOnce(&mut Control) + Send>;

/// A handle on the control thread; cheap to clone.
#[derive(Clone)]
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Nanoseconds the thread spent running jobs: near the wall time, the one writer is the
    /// bound (`/metrics` shows it).
    busy: Arc<AtomicU64>,
}

/// Identity of the pinned maps (the inode of the `META` pin): it changes when `floatip detach`
/// and `attach` replace the maps, and is `None` while detached.
fn pin_identity(bpffs: &Path) -> Option<u64> {
    std::fs::metadata(bpffs.join("maps").join(floatip_common::maps::META))
        .ok()
        .map(|m| m.ino())
}

impl Worker {
    /// Starts the thread with a control plane over `state` and `bpffs`; fails if the state
    /// cannot be opened.
    pub fn start(state: PathBuf, bpffs: PathBuf) -> Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let busy = Arc::new(AtomicU64::new(0));
        let busy_ns = busy.clone();
        thread::Builder::new()
            .name("floatip-control".into())
            .spawn(move || {
                let open = || Control::open(&state, &bpffs);
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
                for job in rx {
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
                    // A panicking job must not take the agent down; its reply channel is
                    // dropped, so that request fails, and the control is opened afresh.
                    let started = Instant::now();
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job(&mut control)
                    }));
                    busy_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    if outcome.is_err() {
                        eprintln!(
                            "floatip agent: a control operation panicked; reopening the state"
                        );
                        pins = None;
                    }
                }
            })
            .context("cannot start the control thread")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the control thread died while opening the state"))??;
        Ok(Self { jobs, busy })
    }

    /// Time the control thread has spent running jobs since it started.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy.load(Ordering::Relaxed))
    }

    /// Runs `f` on the control thread and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Control) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |c| {
                let _ = tx.send(f(c));
            }))
            .map_err(|_| anyhow!("the control thread has stopped"))?;
        rx.await
            .map_err(|_| anyhow!("the control thread dropped a request"))?
    }
}
