//! Checks of user input and of the database's rows, and the lookups that report a missing
//! row as one line.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use super::{
    ports::{InternalNetwork, internal_networks},
    records::{FloatingIp, Pool},
};
use crate::{
    addr::{NEVER_FLOATING, PoolRanges, prefix_span},
    dataplane::{Dataplane, Role},
    error::{ErrorKind, error, fail},
    iface,
    store::{FloatingIpRow, PoolRow, Tx},
};

pub(super) fn stored_ranges(pool: &PoolRow) -> Result<PoolRanges> {
    PoolRanges::from_stored(&pool.ranges, &pool.excludes)
        .with_context(|| format!("pool {} in the state database is corrupt", pool.name))
}

pub(super) fn load_pools(tx: &Tx<'_>) -> Result<Vec<(String, PoolRanges)>> {
    tx.pool_list()?
        .into_iter()
        .map(|p| Ok((p.name.clone(), stored_ranges(&p)?)))
        .collect()
}

pub(super) fn get_pool(tx: &Tx<'_>, name: &str) -> Result<PoolRow> {
    tx.pool_get(name)?
        .ok_or_else(|| error(ErrorKind::NotFound, format!("pool {name} does not exist")))
}

pub(super) fn pool_info(tx: &Tx<'_>, row: PoolRow) -> Result<Pool> {
    let ranges = stored_ranges(&row)?;
    let total = ranges.total();
    let allocated = tx.ip_count_in_pool(&row.name)?;
    Ok(Pool {
        ranges: ranges.ranges().iter().map(ToString::to_string).collect(),
        excludes: ranges.excludes().iter().map(ToString::to_string).collect(),
        name: row.name,
        external_interface: row.external_iface,
        description: row.description,
        total,
        allocated,
        free: total.saturating_sub(allocated),
        created_at: row.created_at,
    })
}

pub(super) fn get_ip(tx: &Tx<'_>, floating: Ipv4Addr) -> Result<FloatingIp> {
    Ok(tx
        .ip_get(floating)?
        .ok_or_else(|| {
            error(
                ErrorKind::NotFound,
                format!("floating IP {floating} not found"),
            )
        })?
        .into())
}

/// The floating IP, as seen by `project`: another project's address is reported exactly as
/// a missing one, so that projects cannot probe each other's addresses.
pub(super) fn owned_ip(
    tx: &Tx<'_>,
    floating: Ipv4Addr,
    project: Option<&str>,
) -> Result<FloatingIpRow> {
    match tx.ip_get(floating)? {
        Some(row) if project.is_none_or(|p| row.project.as_deref() == Some(p)) => Ok(row),
        _ => fail!(NotFound, "floating IP {floating} not found"),
    }
}

pub(super) fn validate_fixed(fixed: Ipv4Addr) -> Result<()> {
    if fixed.is_unspecified() || fixed.is_broadcast() || fixed.is_multicast() || fixed.is_loopback()
    {
        fail!(Invalid, "fixed IP {fixed} is not a unicast host address");
    }
    Ok(())
}

pub(super) fn check_fixed_outside_pools(
    pools: &[(String, PoolRanges)],
    fixed: Ipv4Addr,
) -> Result<()> {
    // Coverage, not usable addresses: a pool's network and excluded addresses are on the
    // external network too.
    if let Some((name, _)) = pools.iter().find(|(_, r)| r.covers(fixed)) {
        fail!(
            Invalid,
            "fixed IP {fixed} lies in floating IP pool {name}: an instance on the external network needs no floating IP"
        );
    }
    Ok(())
}

/// Refuses a pool holding an address of the gateway itself: its traffic would be translated
/// away from the gateway.
pub(super) fn check_no_gateway_addr(
    name: &str,
    ranges: &PoolRanges,
    local: &[(String, Ipv4Addr)],
) -> Result<()> {
    if let Some((iface, ip)) = local.iter().find(|(_, ip)| ranges.contains(*ip)) {
        fail!(
            Invalid,
            "pool {name} contains {ip}, an address of the gateway's interface {iface}; leave it out with --exclude {ip}"
        );
    }
    Ok(())
}

/// Names end up in table columns and in the bulk file format: no blanks, no control
/// characters.
pub(super) fn validate_name(what: &str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() || name.len() > max {
        fail!(Invalid, "{what} must be 1 to {max} characters long");
    }
    if name.starts_with('-') || name.chars().any(|c| c.is_whitespace() || hidden(c)) {
        fail!(
            Invalid,
            "{what} {name:?} must not start with '-' or contain blanks, control or format characters"
        );
    }
    Ok(())
}

/// Tags as `ip list --tags A,B` takes them: names (see [`validate_name`]) without commas,
/// each given once.
pub(super) fn validate_tags(tags: &[String]) -> Result<()> {
    for (i, tag) in tags.iter().enumerate() {
        validate_name("tag", tag, 255)?;
        if tag.contains(',') {
            fail!(Invalid, "tag {tag:?} must not contain ','");
        }
        if tags[..i].contains(tag) {
            fail!(Invalid, "tag {tag:?} is given twice");
        }
    }
    Ok(())
}

pub(super) fn validate_text(what: &str, text: &str, max: usize) -> Result<()> {
    if text.len() > max || text.chars().any(hidden) {
        fail!(
            Invalid,
            "{what} must be at most {max} characters, without control or format characters"
        );
    }
    Ok(())
}

pub(super) fn validate_iface(name: &str) -> Result<()> {
    // IFNAMSIZ is 16 including the terminating NUL.
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', ':'])
        || name.chars().any(|c| c.is_whitespace())
    {
        fail!(Invalid, "'{name}' is not a valid interface name");
    }
    Ok(())
}

/// Refuses an address of the gateway itself as either half of a pair: the gateway must never
/// answer ARP for, or translate, its own addresses.
pub(super) fn check_not_gateway_addr(addr: Ipv4Addr, local: &[(String, Ipv4Addr)]) -> Result<()> {
    if let Some((nic, _)) = local.iter().find(|(_, a)| *a == addr) {
        fail!(
            Invalid,
            "{addr} is an address of the gateway's interface {nic}"
        );
    }
    Ok(())
}

/// Fails unless the kernel routes `fixed` out of one of the gateway's internal NICs.
/// `networks` are [`internal_networks`], read once per command (a bulk file checks many).
pub(super) fn check_reachable(
    maps: &Dataplane,
    networks: &[InternalNetwork],
    fixed: Ipv4Addr,
) -> Result<()> {
    match maps.internal_route(fixed)? {
        Some(_) => check_host_of_subnet(fixed, networks),
        None => {
            fail!(
                Invalid,
                "fixed IP {fixed} is not reachable through an internal interface of the gateway"
            )
        }
    }
}

/// Refuses pool ranges that can never be floating IPs (loopback, link-local, multicast, ...).
pub(super) fn check_not_reserved(name: &str, ranges: &PoolRanges) -> Result<()> {
    for &(addr, len) in NEVER_FLOATING {
        let (first, last) = prefix_span(addr, len);
        if ranges.overlaps_span(first, last) {
            fail!(
                Invalid,
                "pool {name} ({ranges}) overlaps {addr}/{len}, which can never hold floating IPs"
            );
        }
    }
    Ok(())
}

/// Refuses a pool that overlaps a tenant subnet: the instances' own traffic from it would be
/// dropped as spoofed.
pub(super) fn check_not_internal(name: &str, ranges: &PoolRanges, maps: &Dataplane) -> Result<()> {
    for net in internal_networks(maps)? {
        for s in &net.subnets {
            let (first, last) = prefix_span(s.network, s.prefix_len);
            if ranges.overlaps_span(first, last) {
                fail!(
                    Invalid,
                    "pool {name} ({ranges}) overlaps {}/{}, a subnet routed through the internal interface {}",
                    s.network,
                    s.prefix_len,
                    net.name
                );
            }
        }
    }
    Ok(())
}

/// Refuses a fixed IP that is the network or broadcast address of the internal subnet it lies
/// in (the most specific one).
fn check_host_of_subnet(fixed: Ipv4Addr, networks: &[InternalNetwork]) -> Result<()> {
    let subnet = networks
        .iter()
        .flat_map(|n| n.subnets.iter().map(move |s| (&n.name, s)))
        .filter(|(_, s)| s.contains(fixed))
        .max_by_key(|(_, s)| s.prefix_len);
    if let Some((nic, s)) = subnet
        && s.prefix_len < 31
    {
        let (first, last) = prefix_span(s.network, s.prefix_len);
        if fixed == first || fixed == last {
            let what = if fixed == first {
                "network"
            } else {
                "broadcast"
            };
            fail!(
                Invalid,
                "fixed IP {fixed} is the {what} address of {}/{} on {nic}",
                s.network,
                s.prefix_len
            );
        }
    }
    Ok(())
}

/// Refuses `--external NIC` unless it is an external NIC of the attached data plane.
pub(super) fn check_external_nic(nic: &str, maps: &Dataplane) -> Result<()> {
    let names: Vec<String> = maps
        .nics(Role::External)?
        .into_iter()
        .map(|(idx, _)| iface::name(idx).unwrap_or_else(|| format!("#{idx}")))
        .collect();
    if !names.iter().any(|n| n == nic) {
        fail!(
            Invalid,
            "{nic} is not an external interface of this gateway (attached: {})",
            names.join(", ")
        );
    }
    Ok(())
}

/// Control characters and Unicode format characters (category Cf: zero-width spaces and
/// joiners, bidirectional overrides and isolates, the BOM, tags): invisible or reordering in a
/// terminal, so a name holding one can pass for another.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{600}'..='\u{605}'
                | '\u{61c}'
                | '\u{6dd}'
                | '\u{70f}'
                | '\u{890}'..='\u{891}'
                | '\u{8e2}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )
}
