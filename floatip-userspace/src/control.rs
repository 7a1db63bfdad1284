//! The control layer: pools, floating IP allocation, association, quotas and the data plane's
//! life cycle (attach, detach, status, map plumbing). The only module that combines the store
//! and the data plane; the CLI (and the agent's API) only parse and present around it.
//!
//! Every mutation follows the same shape: validate inside a `BEGIN IMMEDIATE` transaction,
//! change the rows, update the maps, and commit only if the maps took the change. Any error
//! leaves both the database and the maps as they were, and is one line naming what is wrong.
//!
//! Keeping the maps in step with the database relies on the association generation: the store
//! bumps it in every transaction that changes associations, and the maps record the generation
//! they reflect. Before touching the maps a transaction marks them [`GENERATION_DIRTY`] (a value
//! the database never reaches) and records the new generation only after the commit, so a crash
//! at any point leaves a mismatch that the next command notices and repairs ([`sync`]). In
//! normal operation the check is one comparison, so the cost of an association does not grow
//! with their number.

mod batch;
mod gateway;
mod group;
mod ips;
mod pools;
pub mod ports;
mod quotas;
mod records;
pub mod stats;
mod sync;
#[cfg(test)]
mod tests;
pub mod users;
mod validate;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Result;

pub use self::{
    gateway::{AttachReport, Gateway, GatewayStatus, follow_in_background},
    group::{Fence, TenantGateway, owns, preferred_owner, set_owned},
    ips::MAX_TAGS,
    records::{Associate, FloatingIp, IpChange, IpQuery, IpStatus, Pool, Quota},
    sync::{PairDifference, RepairCounts, SyncReport, SyncState, repair_counts, take_maps_written},
};
use crate::{
    dataplane::{self, Dataplane},
    error::{ErrorKind, error},
    garp::Announcer,
    store::{Store, StoreSpec},
};

/// Map generation meaning "being changed, or changed without the control plane": never equal
/// to a database generation, so it always triggers a comparison.
pub const GENERATION_DIRTY: u64 = u64::MAX;

/// The state database plus, when attached, the data plane's maps.
pub struct Control {
    store: Store,
    bpffs: PathBuf,
    /// Opened on first use (most commands never need the maps): `None` until then, then
    /// `Some(None)` when the data plane is not attached.
    maps: Option<Option<Dataplane>>,
    /// Where associations are announced from: `None` announces before the change returns (a
    /// CLI process must before it exits), the agent's queues for its announcing thread.
    announcer: Option<Arc<Announcer>>,
}

impl Control {
    /// Opens the state at `state` together with the data plane pinned under `bpffs`, if one is.
    /// The two must belong together: while maps are pinned, no database is created, and one
    /// the maps were not loaded from is refused, so a typo in `--state` changes nothing.
    pub fn open(state: &StoreSpec, bpffs: &Path) -> Result<Self> {
        if !Dataplane::is_attached(bpffs) {
            return Ok(Self {
                store: Store::open_spec(state, true)?,
                bpffs: bpffs.to_owned(),
                maps: Some(None),
                announcer: None,
            });
        }
        if !Dataplane::layout_matches(bpffs)? {
            // Maps this floatip cannot read (nor tell the database of): the database alone
            // stays usable; every command that needs the maps reports the layout.
            return Ok(Self {
                store: Store::open_spec(state, false)?,
                bpffs: bpffs.to_owned(),
                maps: None,
                announcer: None,
            });
        }
        let maps = Dataplane::open(bpffs)?;
        let mut store = open_existing_for(state, bpffs, &maps)?;
        check_belongs(&mut store, &maps, bpffs)?;
        Ok(Self::new(store, bpffs, Some(maps)))
    }

    /// [`Self::open`] without the identity check, for `attach --adopt`, which is about to make
    /// the maps this database's.
    fn open_adopting(state: &StoreSpec, bpffs: &Path) -> Result<Self> {
        let maps = Dataplane::open(bpffs)?;
        let store = open_existing_for(state, bpffs, &maps)?;
        Ok(Self::new(store, bpffs, Some(maps)))
    }

    /// A control plane over `store` and the maps already opened from `bpffs` (`None`: not
    /// attached).
    pub fn new(store: Store, bpffs: &Path, maps: Option<Dataplane>) -> Self {
        Self {
            store,
            bpffs: bpffs.to_owned(),
            maps: Some(maps),
            announcer: None,
        }
    }

    /// Announces associations through `announcer` (off the caller's path) from now on.
    pub fn set_announcer(&mut self, announcer: Arc<Announcer>) {
        self.announcer = Some(announcer);
    }

    /// The maps, if attached and already opened.
    fn maps_ref(&self) -> Option<&Dataplane> {
        self.maps.as_ref().and_then(Option::as_ref)
    }

    /// Path of the state database.
    pub fn state_path(&self) -> &Path {
        self.store.path()
    }

    /// The store and, if attached, the maps, borrowed separately so that a transaction can
    /// update the maps.
    fn parts(&mut self) -> Result<(&mut Store, Option<&mut Dataplane>)> {
        if self.maps.is_none() {
            let maps = if Dataplane::is_attached(&self.bpffs) {
                Some(Dataplane::open(&self.bpffs)?)
            } else {
                None
            };
            self.maps = Some(maps);
        }
        let maps = self.maps.as_mut().and_then(Option::as_mut);
        Ok((&mut self.store, maps))
    }

    /// Like [`Self::parts`], failing first thing when the data plane is not attached.
    fn parts_attached(&mut self) -> Result<(&mut Store, &mut Dataplane)> {
        let bpffs = self.bpffs.clone();
        let (store, maps) = self.parts()?;
        Ok((store, maps.ok_or_else(|| dataplane::not_attached(&bpffs))?))
    }
}

/// The database at `state`, which must exist: maps are pinned, so a missing file is a mistake
/// (creating one would "repair" the maps into emptiness).
fn open_existing_for(state: &StoreSpec, bpffs: &Path, maps: &Dataplane) -> Result<Store> {
    if maps.db_identity()? == 0 {
        // Maps no database has claimed yet (attach records its database at the end).
        return Store::open_spec(state, true);
    }
    if !state.exists() {
        return Err(error(
            ErrorKind::Unavailable,
            format!(
                "there is no state database at {}, but the data plane in {} was loaded from one \
                 (identity {:016x}); check --state / FLOATIP_STATE",
                state,
                bpffs.display(),
                maps.db_identity()?
            ),
        ));
    }
    Store::open_spec(state, false)
}

/// Refuses maps that were loaded from another database. Maps that record no database yet
/// (just created, or written only by `nat` plumbing) belong to whichever one attaches them.
fn check_belongs(store: &mut Store, maps: &Dataplane, bpffs: &Path) -> Result<()> {
    let (ours, theirs) = (store.identity()?, maps.db_identity()?);
    if theirs != 0 && theirs != ours {
        return Err(error(
            ErrorKind::Unavailable,
            format!(
                "the state database {} (identity {ours:016x}) is not the one the data plane in {} \
                 was loaded from (identity {theirs:016x}); check --state / FLOATIP_STATE, or run \
                 `floatip attach --adopt` to reload the maps from this database",
                store.path().display(),
                bpffs.display()
            ),
        ));
    }
    Ok(())
}
