//! API users: name, project, role and an argon2 password hash (the hash is made and checked
//! in `control`; this module only stores it).

use anyhow::Result;
use rusqlite::{OptionalExtension, Row, params};

use super::SqliteTx;

/// A user as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserRow {
    pub name: String,
    pub project: String,
    /// `admin` or `member` (a CHECK constraint keeps it so).
    pub role: String,
    /// PHC string (`$argon2id$...`).
    pub password_hash: String,
    pub created_at: String,
}

fn user_row(r: &Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        name: r.get(0)?,
        project: r.get(1)?,
        role: r.get(2)?,
        password_hash: r.get(3)?,
        created_at: r.get(4)?,
    })
}

impl SqliteTx<'_> {
    pub fn user_insert(&self, name: &str, project: &str, role: &str, hash: &str) -> Result<()> {
        self.tx.execute(
            "INSERT INTO users (name, project, role, password_hash) VALUES (?1, ?2, ?3, ?4)",
            params![name, project, role, hash],
        )?;
        Ok(())
    }

    pub fn user_get(&self, name: &str) -> Result<Option<UserRow>> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT name, project, role, password_hash, created_at FROM users WHERE name = ?1",
            )?
            .query_row([name], user_row)
            .optional()?)
    }

    pub fn user_list(&self) -> Result<Vec<UserRow>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT name, project, role, password_hash, created_at FROM users ORDER BY name",
        )?;
        let rows = stmt
            .query_map([], user_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn user_delete(&self, name: &str) -> Result<bool> {
        Ok(self
            .tx
            .execute("DELETE FROM users WHERE name = ?1", [name])?
            > 0)
    }

    /// Every project a user, a quota, a floating IP or a port names (what the API can show
    /// as projects).
    pub fn project_names(&self) -> Result<Vec<String>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT project FROM users UNION SELECT project FROM quotas
             UNION SELECT project FROM floating_ips WHERE project IS NOT NULL
             UNION SELECT project FROM ports ORDER BY 1",
        )?;
        let rows = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}
