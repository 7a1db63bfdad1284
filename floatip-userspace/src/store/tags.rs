//! Tags of floating IPs: a set of short strings per address, kept with it (deleting the
//! address deletes them). Rows carry their tags already ([`super::IP_COLUMNS`]); these are
//! the changes.

use anyhow::Result;

use super::SqliteTx;

/// The tags of [`super::IP_COLUMNS`]' joined column.
pub(super) fn split(joined: Option<String>) -> Vec<String> {
    joined
        .map(|j| j.split('\n').map(str::to_owned).collect())
        .unwrap_or_default()
}

impl SqliteTx<'_> {
    /// Adds `tags` to the floating IP with row id `id`; tags it has already stay as they are.
    pub fn ip_tags_add(&self, id: i64, tags: &[String]) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO floating_ip_tags (floating_ip, tag) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?;
        for tag in tags {
            stmt.execute(rusqlite::params![id, tag])?;
        }
        Ok(())
    }

    /// Removes `tags` (all of them with `None`) from the floating IP with row id `id`.
    pub fn ip_tags_remove(&self, id: i64, tags: Option<&[String]>) -> Result<()> {
        match tags {
            None => {
                self.tx
                    .execute("DELETE FROM floating_ip_tags WHERE floating_ip = ?1", [id])?;
            }
            Some(tags) => {
                let mut stmt = self.tx.prepare_cached(
                    "DELETE FROM floating_ip_tags WHERE floating_ip = ?1 AND tag = ?2",
                )?;
                for tag in tags {
                    stmt.execute(rusqlite::params![id, tag])?;
                }
            }
        }
        Ok(())
    }
}
