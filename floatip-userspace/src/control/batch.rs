//! Group commit: the agent runs the requests queued at its control thread as one batch, one
//! transaction with one commit (one sync of the WAL) for all of them, and answers each only
//! once that commit is done. Each change inside still is a savepoint of its own that a failure
//! rolls back alone (see `store`).
//!
//! The maps follow the changes at once, as outside a batch, but keep the dirty mark until the
//! commit: what the batch's changes have made of them is recorded here instead (the generation
//! they reflect within the batch's transaction, so that the next change's drift check stays one
//! comparison) and written to the maps only after the commit. A crash before it leaves them
//! dirty, to be compared and repaired like any interrupted change.

use std::cell::Cell;

use anyhow::Result;

use super::{Control, GENERATION_DIRTY};
use crate::dataplane::Dataplane;

/// The state of this thread's batch, while one is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Batch {
    /// The maps are as the batch found them, or a change failed half way: their own mark holds.
    Unknown,
    /// The maps are marked dirty and reflect the database at this generation, as the batch's
    /// transaction sees it.
    At(u64),
}

thread_local! {
    /// Per thread, like the transaction it describes: a `Control` is used on one thread.
    static BATCH: Cell<Option<Batch>> = const { Cell::new(None) };
}

/// Whether the maps reflect `generation` of the open batch's transaction.
pub(super) fn maps_at(generation: u64) -> bool {
    BATCH.get() == Some(Batch::At(generation))
}

/// A change is about to touch the maps: the batch no longer knows what they reflect.
pub(super) fn maps_changing() {
    if BATCH.get().is_some() {
        BATCH.set(Some(Batch::Unknown));
    }
}

/// Records that the maps reflect `generation`: in the maps, or, in a batch, here (the maps
/// stay marked dirty until the commit).
pub(super) fn record_generation(maps: &mut Dataplane, generation: u64) -> Result<()> {
    if BATCH.get().is_none() {
        return maps.set_generation(generation);
    }
    if maps.generation()? != GENERATION_DIRTY {
        maps.set_generation(GENERATION_DIRTY)?;
    }
    BATCH.set(Some(Batch::At(generation)));
    Ok(())
}

impl Control {
    /// Opens a batch: until [`Self::end_batch`], every change joins one transaction.
    pub fn begin_batch(&mut self) -> Result<()> {
        self.store.begin_batch()?;
        BATCH.set(Some(Batch::Unknown));
        Ok(())
    }

    /// Whether anything read in the open batch could still be undone: a write was made in
    /// it. Until then an answer need not wait for the commit.
    pub fn batch_has_writes(&self) -> bool {
        self.store.batch_writes() > 0
    }

    /// Commits the open batch (or with `commit` false rolls it back), then gives the maps the
    /// generation they reflect. When the batch's changes do not become durable, the maps are
    /// brought back to the database as `attach` does (pools and associations), since they
    /// already took those changes.
    pub fn end_batch(&mut self, commit: bool) -> Result<()> {
        let batch = BATCH.take();
        let ended = self.store.end_batch(commit);
        let committed = commit && ended.is_ok();
        if let Some(maps) = self.maps.as_mut().and_then(Option::as_mut) {
            match batch {
                Some(Batch::At(g)) if committed => {
                    if let Err(e) = maps.set_generation(g) {
                        // Durable and in the maps; only the mark is stale (see `finish`).
                        eprintln!(
                            "floatip: warning: cannot record generation {g} in the maps: {e:#}"
                        );
                    }
                }
                _ if committed => {}
                _ => {
                    if let Err(e) = self.resync() {
                        eprintln!(
                            "floatip: warning: cannot bring the maps back to the database after \
                             a batch was rolled back: {e:#}"
                        );
                    }
                }
            }
        }
        ended
    }
}
