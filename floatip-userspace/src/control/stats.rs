//! What the agent's `/metrics` reads from the data plane: per-outcome counters, association
//! count and capacity, and per-association packet and byte counters.

use std::collections::BTreeMap;

use anyhow::Result;

use super::Control;
use crate::dataplane::PairStats;

/// One reading of the data plane's counters.
#[derive(Clone, Debug)]
pub struct DataplaneStats {
    pub outcomes: BTreeMap<&'static str, u64>,
    pub associations: usize,
    pub max_associations: u32,
    pub pairs: Vec<PairStats>,
}

impl Control {
    /// The counters, or `None` when the data plane is not attached.
    pub fn dataplane_stats(&mut self) -> Result<Option<DataplaneStats>> {
        let (_, maps) = self.parts()?;
        let Some(dp) = maps else { return Ok(None) };
        let pairs = dp.pair_stats(None)?;
        Ok(Some(DataplaneStats {
            outcomes: dp.outcomes()?,
            associations: pairs.len(),
            max_associations: dp.max_associations()?,
            pairs,
        }))
    }
}
