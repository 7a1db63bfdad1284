//! Ports: an instance's fixed IP on an internal network, as the Neutron API names it. A
//! floating IP is associated with a port by associating it with the port's fixed IP, so the
//! association itself stays in `floating_ips` (one source of truth for the maps).

use std::net::Ipv4Addr;

use anyhow::Result;
use rusqlite::{OptionalExtension, Row, params};

use super::{SqliteTx, ip_from_sql, ip_to_sql};

/// A port as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortRow {
    pub id: String,
    /// The internal network: the gateway's internal interface the fixed IP lies behind.
    pub network: String,
    pub fixed_ip: Ipv4Addr,
    pub name: String,
    pub device_id: String,
    pub device_owner: String,
    pub project: String,
    pub description: String,
    pub created_at: String,
}

const PORT_COLUMNS: &str =
    "id, network, fixed_ip, name, device_id, device_owner, project, description, created_at";

fn port_row(r: &Row<'_>) -> rusqlite::Result<PortRow> {
    Ok(PortRow {
        id: r.get(0)?,
        network: r.get(1)?,
        fixed_ip: ip_from_sql(r.get(2)?)?,
        name: r.get(3)?,
        device_id: r.get(4)?,
        device_owner: r.get(5)?,
        project: r.get(6)?,
        description: r.get(7)?,
        created_at: r.get(8)?,
    })
}

impl SqliteTx<'_> {
    pub fn port_insert(&self, p: &PortRow) -> Result<PortRow> {
        self.tx.execute(
            "INSERT INTO ports (id, network, fixed_ip, name, device_id, device_owner, project, description)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                p.id,
                p.network,
                ip_to_sql(p.fixed_ip),
                p.name,
                p.device_id,
                p.device_owner,
                p.project,
                p.description
            ],
        )?;
        Ok(self.port_get(&p.id)?.expect("just inserted"))
    }

    pub fn port_get(&self, id: &str) -> Result<Option<PortRow>> {
        Ok(self
            .tx
            .prepare_cached(&format!("SELECT {PORT_COLUMNS} FROM ports WHERE id = ?1"))?
            .query_row([id], port_row)
            .optional()?)
    }

    pub fn port_by_fixed(&self, fixed: Ipv4Addr) -> Result<Option<PortRow>> {
        Ok(self
            .tx
            .prepare_cached(&format!(
                "SELECT {PORT_COLUMNS} FROM ports WHERE fixed_ip = ?1"
            ))?
            .query_row([ip_to_sql(fixed)], port_row)
            .optional()?)
    }

    /// Every port, or a project's, in creation order.
    pub fn port_list(&self, project: Option<&str>) -> Result<Vec<PortRow>> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "SELECT {PORT_COLUMNS} FROM ports WHERE (?1 IS NULL OR project = ?1) ORDER BY rowid"
        ))?;
        let rows = stmt
            .query_map([project], port_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Sets the port's name, device and description.
    pub fn port_update(&self, p: &PortRow) -> Result<()> {
        self.tx.execute(
            "UPDATE ports SET name = ?2, device_id = ?3, device_owner = ?4, description = ?5 WHERE id = ?1",
            params![p.id, p.name, p.device_id, p.device_owner, p.description],
        )?;
        Ok(())
    }

    pub fn port_delete(&self, id: &str) -> Result<bool> {
        Ok(self.tx.execute("DELETE FROM ports WHERE id = ?1", [id])? > 0)
    }
}
