//! What the agent's `/metrics` reads from the data plane: per-outcome counters, association
//! count and capacity, per-association packet and byte counters, and whether the maps are in
//! step with the database.

use std::collections::BTreeMap;

use anyhow::Result;

use super::{Control, SyncState};
use crate::dataplane::PairStats;

/// One reading of the data plane's counters.
#[derive(Clone, Debug)]
pub struct DataplaneStats {
    pub outcomes: BTreeMap<&'static str, u64>,
    pub associations: usize,
    pub max_associations: u32,
    pub pairs: Vec<PairStats>,
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
        let pairs = dp.pair_stats(None)?;
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
            associations: pairs.len(),
            max_associations,
            pairs,
            sync,
            differing,
        }))
    }
}
