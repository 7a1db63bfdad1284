//! The records the control layer returns: what commands print and the API serves.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::store::{FloatingIpRow, QuotaRow};

/// ACTIVE when associated (DETACHED while no data plane carries it), DOWN when not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum IpStatus {
    Active,
    Down,
    /// Associated in the database, but no data plane is attached to carry it.
    Detached,
}

impl IpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Down => "DOWN",
            Self::Detached => "DETACHED",
        }
    }
}

/// A floating IP as commands print it; the field names are the stable JSON keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FloatingIp {
    pub id: i64,
    pub floating_ip_address: Ipv4Addr,
    pub fixed_ip_address: Option<Ipv4Addr>,
    pub pool: String,
    pub project: Option<String>,
    pub instance: Option<String>,
    pub status: IpStatus,
    pub description: Option<String>,
    /// Sorted.
    pub tags: Vec<String>,
    pub created_at: String,
}

impl From<FloatingIpRow> for FloatingIp {
    fn from(r: FloatingIpRow) -> Self {
        Self {
            id: r.id,
            floating_ip_address: r.address,
            fixed_ip_address: r.fixed_ip,
            status: if r.fixed_ip.is_some() {
                IpStatus::Active
            } else {
                IpStatus::Down
            },
            pool: r.pool,
            project: r.project,
            instance: r.instance,
            description: r.description,
            tags: r.tags,
            created_at: r.created_at,
        }
    }
}

/// A pool with its address counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pool {
    pub name: String,
    pub ranges: Vec<String>,
    pub excludes: Vec<String>,
    pub external_interface: Option<String>,
    pub description: Option<String>,
    pub total: u64,
    pub allocated: u64,
    pub free: u64,
    pub created_at: String,
}

/// A project's floating IP usage; `limit` is `None` when unlimited.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quota {
    pub project: String,
    pub used: u64,
    pub limit: Option<u32>,
}

impl From<QuotaRow> for Quota {
    fn from(r: QuotaRow) -> Self {
        Self {
            project: r.project,
            used: r.used,
            limit: r.limit,
        }
    }
}

/// Filter of [`Control::ip_list`]; `None` (and an empty list) matches everything.
#[derive(Clone, Debug, Default)]
pub struct IpQuery<'a> {
    pub pool: Option<&'a str>,
    pub project: Option<&'a str>,
    pub status: Option<IpStatus>,
    pub floating_ip: Option<Ipv4Addr>,
    pub fixed_ip: Option<Ipv4Addr>,
    pub instance: Option<&'a str>,
    /// Only addresses that have every one of these tags.
    pub tags: &'a [String],
    /// Only addresses that have at least one of these tags.
    pub any_tags: &'a [String],
    /// Not the addresses that have every one of these tags.
    pub not_tags: &'a [String],
    /// Not the addresses that have any of these tags.
    pub not_any_tags: &'a [String],
}

/// Changes of `ip set`/`ip unset` (and the API's update); applied in this order: clear the
/// description or set it, remove tags (all with `clear_tags`), add tags.
#[derive(Clone, Debug, Default)]
pub struct IpChange<'a> {
    /// `Some(None)` clears it.
    pub description: Option<Option<&'a str>>,
    pub clear_tags: bool,
    pub remove_tags: &'a [String],
    pub add_tags: &'a [String],
}

/// One `ip associate`.
#[derive(Clone, Debug)]
pub struct Associate<'a> {
    pub floating: Ipv4Addr,
    pub fixed: Ipv4Addr,
    pub instance: Option<&'a str>,
    /// Acting for this project: other projects' addresses are invisible.
    pub project: Option<&'a str>,
    /// Move the floating IP if it is already associated.
    pub force: bool,
}
