//! Floating IPs: allocation, association (one, or a file in one transaction),
//! disassociation and release.

use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{Context, Result};

use super::{
    Associate, Control, FloatingIp, IpChange, IpQuery, IpStatus,
    gateway::announce,
    ports::internal_networks,
    sync::{finish, sync_maps, update_maps},
    validate::{
        check_fixed_outside_pools, check_not_gateway_addr, check_reachable, get_ip, get_pool,
        load_pools, owned_ip, stored_ranges, validate_fixed, validate_name, validate_tags,
        validate_text,
    },
};
use crate::{
    addr::BulkEntry,
    dataplane::Pair,
    error::{ErrorKind, error, fail},
    iface,
    store::IpFilter,
};

/// Most tags one floating IP may have: they are labels, not storage.
pub const MAX_TAGS: usize = 64;

impl Control {
    /// `ip create`: the lowest free address of `pool`, or `address`.
    pub fn ip_create(
        &mut self,
        pool: &str,
        address: Option<Ipv4Addr>,
        project: Option<&str>,
        description: Option<&str>,
    ) -> Result<FloatingIp> {
        if let Some(p) = project {
            validate_name("project", p, 255)?;
        }
        if let Some(d) = description {
            validate_text("description", d, 255)?;
        }
        self.store.write(|tx| {
            let ranges = stored_ranges(&get_pool(tx, pool)?)?;
            if let Some(project) = project
                && let Some(limit) = tx.quota_get(project)?
            {
                let used = tx.ip_count_for_project(project)?;
                if used >= u64::from(limit) {
                    fail!(
                        Conflict,
                        "project {project} is at its quota: {used} of {limit} floating IPs in use"
                    );
                }
            }
            let address = match address {
                Some(a) => {
                    if !ranges.contains(a) {
                        fail!(Invalid, "{a} is not an address of pool {pool} ({ranges})");
                    }
                    if tx.ip_get(a)?.is_some() {
                        fail!(Conflict, "floating IP {a} is already allocated");
                    }
                    a
                }
                None => ranges
                    .lowest_free(&tx.ip_addresses_in_pool(pool)?)
                    .ok_or_else(|| {
                        error(
                            ErrorKind::Conflict,
                            format!("no more floating IPs in pool {pool}"),
                        )
                    })?,
            };
            Ok(tx.ip_insert(address, pool, project, description)?.into())
        })
    }

    pub fn ip_list(&mut self, query: &IpQuery<'_>) -> Result<Vec<FloatingIp>> {
        self.store
            .read(|tx| {
                if let Some(pool) = query.pool {
                    get_pool(tx, pool)?;
                }
                let filter = IpFilter {
                    pool: query.pool,
                    project: query.project,
                    associated: query.status.map(|s| s == IpStatus::Active),
                    address: query.floating_ip,
                    fixed_ip: query.fixed_ip,
                    instance: query.instance,
                };
                let has = |r: &FloatingIp, t: &String| r.tags.binary_search(t).is_ok();
                // Neutron's four: an empty list does not filter.
                let all = |r: &FloatingIp, tags: &[String]| tags.iter().all(|t| has(r, t));
                let any = |r: &FloatingIp, tags: &[String]| tags.iter().any(|t| has(r, t));
                Ok(tx
                    .ip_list(&filter)?
                    .into_iter()
                    .map(FloatingIp::from)
                    .filter(|r| all(r, query.tags))
                    .filter(|r| query.any_tags.is_empty() || any(r, query.any_tags))
                    .filter(|r| query.not_tags.is_empty() || !all(r, query.not_tags))
                    .filter(|r| !any(r, query.not_any_tags))
                    .collect())
            })
            .map(|records| self.as_served(records))
    }

    pub fn ip_show(&mut self, floating: Ipv4Addr, project: Option<&str>) -> Result<FloatingIp> {
        let record = self
            .store
            .read(|tx| Ok(owned_ip(tx, floating, project)?.into()))?;
        Ok(self.as_served(vec![record]).remove(0))
    }

    /// `ip set`/`ip unset` of the floating IP with row id `id` (the API's update shares it):
    /// all of `change` or, on any error, nothing.
    pub fn ip_update(
        &mut self,
        id: i64,
        project: Option<&str>,
        change: &IpChange<'_>,
    ) -> Result<FloatingIp> {
        if let Some(Some(d)) = change.description {
            validate_text("description", d, 255)?;
        }
        validate_tags(change.add_tags)?;
        validate_tags(change.remove_tags)?;
        self.store.write(|tx| {
            let row = match tx.ip_get_by_id(id)? {
                Some(row) if project.is_none_or(|p| row.project.as_deref() == Some(p)) => row,
                _ => fail!(NotFound, "floating IP {id} not found"),
            };
            if let Some(description) = change.description {
                tx.ip_set_description(id, description)?;
            }
            let mut tags: BTreeSet<&String> = row.tags.iter().collect();
            if change.clear_tags {
                tx.ip_tags_remove(id, None)?;
                tags.clear();
            } else if !change.remove_tags.is_empty() {
                tx.ip_tags_remove(id, Some(change.remove_tags))?;
                tags.retain(|t| !change.remove_tags.contains(t));
            }
            tags.extend(change.add_tags);
            if tags.len() > MAX_TAGS {
                fail!(
                    Invalid,
                    "floating IP {} would have {} tags; at most {MAX_TAGS} are allowed",
                    row.address,
                    tags.len()
                );
            }
            tx.ip_tags_add(id, change.add_tags)?;
            get_ip(tx, row.address)
        })
    }

    /// The address `key` names: an address, or the record's id (as `ip list` shows it).
    /// Another project's id is not found, like its address.
    pub fn ip_resolve(&mut self, key: &str, project: Option<&str>) -> Result<Ipv4Addr> {
        if let Ok(ip) = key.parse::<Ipv4Addr>() {
            return Ok(ip);
        }
        let Ok(id) = key.parse::<i64>() else {
            fail!(
                Invalid,
                "'{key}' is neither an IPv4 address nor a floating IP id"
            );
        };
        self.store.read(|tx| match tx.ip_get_by_id(id)? {
            Some(row) if project.is_none_or(|p| row.project.as_deref() == Some(p)) => {
                Ok(row.address)
            }
            _ => fail!(NotFound, "floating IP {id} not found"),
        })
    }

    /// Records as the gateway serves them: an association is ACTIVE only while a data plane
    /// is attached to carry it.
    /// In a gateway group, it is ACTIVE once every live gateway has applied it (every one
    /// carries every association), DOWN until then.
    fn as_served(&mut self, mut records: Vec<FloatingIp>) -> Vec<FloatingIp> {
        if !matches!(self.parts(), Ok((_, Some(_)))) {
            for r in &mut records {
                if r.status == IpStatus::Active {
                    r.status = IpStatus::Detached;
                }
            }
            return records;
        }
        let applied_everywhere = match self.store.group_view() {
            Ok(Some(view)) => view.live.values().min().copied(),
            _ => None,
        };
        if let Some(applied) = applied_everywhere {
            for r in &mut records {
                if r.status == IpStatus::Active
                    && self
                        .store
                        .ip_revision(r.floating_ip_address)
                        .is_some_and(|rev| rev > applied)
                {
                    r.status = IpStatus::Down;
                }
            }
        }
        records
    }

    /// `ip associate`. Associating a pair that already exists changes nothing.
    pub fn ip_associate(&mut self, req: &Associate<'_>) -> Result<FloatingIp> {
        let Associate {
            floating,
            fixed,
            instance,
            project,
            force,
        } = *req;
        if let Some(i) = instance {
            validate_name("instance", i, 255)?;
        }
        let announcer = self.announcer.clone();
        let (store, maps) = self.parts_attached()?;
        validate_fixed(fixed)?;
        let (record, generation) = store.write(|tx| {
            sync_maps(tx, maps)?;
            let row = owned_ip(tx, floating, project)?;
            check_fixed_outside_pools(&load_pools(tx)?, fixed)?;
            if let Some(holder) = tx.ip_by_fixed(fixed)? {
                if holder.address == floating {
                    return Ok((row.into(), None));
                }
                fail!(Conflict, "fixed IP {fixed} already has floating IP {}", holder.address);
            }
            if let Some(current) = row.fixed_ip
                && !force
            {
                fail!(Conflict, "floating IP {floating} is already associated with {current}; use --force to move it");
            }
            let local = iface::addresses()?;
            check_not_gateway_addr(floating, &local)?;
            check_not_gateway_addr(fixed, &local)?;
            check_reachable(maps, &internal_networks(maps)?, fixed)?;
            let nic = get_pool(tx, &row.pool)?.external_iface;
            tx.ip_set_association(floating, Some(fixed), instance)?;
            let moving = row.fixed_ip.is_some();
            let generation = update_maps(tx, maps, |m| {
                if moving { m.nat_move(floating, fixed) } else { m.nat_add(floating, fixed) }
            })?;
            Ok((get_ip(tx, floating)?, Some((generation, nic))))
        })?;
        finish(maps, generation.as_ref().map(|(g, _)| *g));
        if let Some((_, nic)) = generation {
            announce(maps, announcer.as_deref(), floating, nic.as_deref());
        }
        // In a group: DOWN until every gateway has it.
        Ok(self.as_served(vec![record]).remove(0))
    }

    /// `ip associate --from-file`: every line in one transaction and one batched map update;
    /// one bad line fails the whole file. Lines that are already in place change nothing.
    pub fn ip_associate_bulk(
        &mut self,
        entries: &[BulkEntry],
        project: Option<&str>,
    ) -> Result<Vec<FloatingIp>> {
        let (store, maps) = self.parts_attached()?;
        for e in entries {
            validate_fixed(e.fixed).with_context(|| format!("line {}", e.line))?;
            if let Some(i) = &e.instance {
                validate_name("instance", i, 255).with_context(|| format!("line {}", e.line))?;
            }
        }
        let (records, generation) = store.write(|tx| {
            sync_maps(tx, maps)?;
            let pools = load_pools(tx)?;
            let local = iface::addresses()?;
            let subnets = internal_networks(maps)?;
            let mut pairs = Vec::with_capacity(entries.len());
            for e in entries {
                let line = || format!("line {}", e.line);
                let row = owned_ip(tx, e.floating, project).with_context(line)?;
                check_fixed_outside_pools(&pools, e.fixed).with_context(line)?;
                if let Some(holder) = tx.ip_by_fixed(e.fixed)? {
                    if holder.address == e.floating {
                        continue;
                    }
                    return Err(error(
                        ErrorKind::Conflict,
                        format!(
                            "fixed IP {} already has floating IP {}",
                            e.fixed, holder.address
                        ),
                    ))
                    .with_context(line);
                }
                if let Some(current) = row.fixed_ip {
                    return Err(error(
                        ErrorKind::Conflict,
                        format!(
                            "floating IP {} is already associated with {current}",
                            e.floating
                        ),
                    ))
                    .with_context(line);
                }
                check_not_gateway_addr(e.floating, &local).with_context(line)?;
                check_not_gateway_addr(e.fixed, &local).with_context(line)?;
                check_reachable(maps, &subnets, e.fixed).with_context(line)?;
                tx.ip_set_association(e.floating, Some(e.fixed), e.instance.as_deref())?;
                pairs.push(Pair {
                    floating: e.floating,
                    fixed: e.fixed,
                });
            }
            let generation = if pairs.is_empty() {
                None
            } else {
                Some(update_maps(tx, maps, |m| {
                    m.nat_add_bulk(&pairs).inspect_err(|_| {
                        // A batch may stop half way: take out whatever of it went in.
                        for p in &pairs {
                            let _ = m.nat_purge(p.floating, p.fixed);
                        }
                    })
                })?)
            };
            let records = entries
                .iter()
                .map(|e| get_ip(tx, e.floating))
                .collect::<Result<Vec<_>>>()?;
            Ok((records, generation))
        })?;
        finish(maps, generation);
        Ok(records)
    }

    /// `ip disassociate`. An address that is not associated is left as it is.
    pub fn ip_disassociate(
        &mut self,
        floating: Ipv4Addr,
        project: Option<&str>,
    ) -> Result<FloatingIp> {
        let (store, maps) = self.parts()?;
        let Some(maps) = maps else {
            // Detached: the database alone; the next attach applies it to fresh maps.
            return store.write(|tx| {
                if owned_ip(tx, floating, project)?.fixed_ip.is_some() {
                    tx.ip_set_association(floating, None, None)?;
                }
                get_ip(tx, floating)
            });
        };
        let (record, generation) = store.write(|tx| {
            sync_maps(tx, maps)?;
            let row = owned_ip(tx, floating, project)?;
            if row.fixed_ip.is_none() {
                return Ok((row.into(), None));
            }
            tx.ip_set_association(floating, None, None)?;
            let generation = update_maps(tx, maps, |m| m.nat_del(floating).map(drop))?;
            Ok((get_ip(tx, floating)?, Some(generation)))
        })?;
        finish(maps, generation);
        Ok(record)
    }

    /// `ip delete`: releases the address, disassociating it first (in the database alone
    /// when the data plane is not attached).
    pub fn ip_delete(&mut self, floating: Ipv4Addr, project: Option<&str>) -> Result<FloatingIp> {
        let (store, mut maps) = self.parts()?;
        let (record, generation) = store.write(|tx| {
            let row = owned_ip(tx, floating, project)?;
            let mut generation = None;
            match maps.as_deref_mut() {
                Some(m) if row.fixed_ip.is_some() => {
                    sync_maps(tx, m)?;
                    tx.ip_delete(floating)?;
                    generation = Some(update_maps(tx, m, |m| m.nat_del(floating).map(drop))?);
                }
                _ => {
                    tx.ip_delete(floating)?;
                }
            }
            Ok((FloatingIp::from(row), generation))
        })?;
        if let Some(m) = maps {
            finish(m, generation);
        }
        Ok(record)
    }
}
