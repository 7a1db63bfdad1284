//! What the agent's `/metrics` reads through the control thread: per-outcome counters, map
//! capacity, and whether the maps are in step with the database. The per-association
//! counters are not read here: at 100,000 pairs that takes half a second, which would hold
//! up every write queued behind it, so the scrape reads them on a thread of its own with its
//! own map handle (`Gateway::nat_stats`).

use std::collections::BTreeMap;

use anyhow::Result;

use super::{Control, SyncState};

/// One reading of the data plane's counters.
#[derive(Clone, Debug)]
pub struct DataplaneStats {
    pub outcomes: BTreeMap<&'static str, u64>,
    pub max_associations: u32,
    /// Maps against database: compared in full only when the generations differ (one lookup
    /// otherwise, so that a scrape stays cheap at a million associations).
    pub sync: SyncState,
    /// Floating IPs on which they differ (0 when the generations agree).
    pub differing: usize,
}

impl Control {
    /// The counters, or `None` when the data plane is not attached.
    pub fn dataplane_stats(&mut self) -> Result<Option<DataplaneStats>> {
        let (_, maps) = self.parts()?;
        let Some(dp) = maps else { return Ok(None) };
        let (outcomes, max_associations) = (dp.outcomes()?, dp.max_associations()?);
        let maps_generation = dp.generation()?;
        let in_step = maps_generation == self.store.read(|tx| tx.generation())?;
        let (sync, differing) = if in_step {
            (SyncState::Clean, 0)
        } else {
            let report = self.check()?;
            (report.state, report.differences.len())
        };
        Ok(Some(DataplaneStats {
            outcomes,
            max_associations,
            sync,
            differing,
        }))
    }
}
