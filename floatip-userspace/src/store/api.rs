//! Queries only the HTTP API needs: floating IPs by their row id (the API's resource id) and
//! quota reset.

use anyhow::Result;
use rusqlite::OptionalExtension;

use super::{FloatingIpRow, IP_COLUMNS, SqliteTx, ip_row};

impl SqliteTx<'_> {
    pub fn ip_get_by_id(&self, id: i64) -> Result<Option<FloatingIpRow>> {
        Ok(self
            .tx
            .prepare_cached(&format!(
                "SELECT {IP_COLUMNS} FROM floating_ips WHERE id = ?1"
            ))?
            .query_row([id], ip_row)
            .optional()?)
    }

    /// Sets the floating IP's description (`None` clears it).
    pub fn ip_set_description(&self, id: i64, description: Option<&str>) -> Result<()> {
        self.tx.execute(
            "UPDATE floating_ips SET description = ?2 WHERE id = ?1",
            rusqlite::params![id, description],
        )?;
        Ok(())
    }

    /// Removes the project's quota (back to unlimited); false if it had none.
    pub fn quota_delete(&self, project: &str) -> Result<bool> {
        Ok(self
            .tx
            .execute("DELETE FROM quotas WHERE project = ?1", [project])?
            > 0)
    }
}
