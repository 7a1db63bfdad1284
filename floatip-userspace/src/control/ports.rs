//! Ports and the operations of the Neutron floating-IP model built on the CLI's: an internal
//! network is one of the gateway's internal NICs, its subnets are the prefixes the kernel routes
//! through it ([`internal_networks`], which the topology checks read too), a port is an
//! instance's fixed IP on one of them, and associating a floating IP with a port is `ip
//! associate` of the port's fixed IP (moving it if it was elsewhere).

use std::net::Ipv4Addr;

use anyhow::Result;
use serde::Serialize;

use super::{
    Associate, Control, FloatingIp, IpChange, IpQuery,
    validate::{owned_ip, validate_name, validate_text},
};
use crate::{
    addr::{PoolRanges, RangeSpec, prefix_span},
    dataplane::{Dataplane, Role},
    error::{ErrorKind, error},
    iface,
    store::{FloatingIpRow, PortRow, Tx},
};

/// An IPv4 subnet the kernel routes through an internal NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TenantSubnet {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// The gateway's own address on it: `None` for a subnet behind a router on the tenant side.
    pub gateway: Option<Ipv4Addr>,
}

impl TenantSubnet {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (first, last) = prefix_span(self.network, self.prefix_len);
        first <= ip && ip <= last
    }

    /// Host addresses an instance may hold: the CIDR without network, broadcast and gateway.
    pub fn hosts(&self) -> Result<PoolRanges> {
        PoolRanges::new(
            vec![RangeSpec::Cidr {
                network: self.network,
                len: self.prefix_len,
            }],
            self.gateway.into_iter().collect(),
        )
    }
}

/// The tenant subnets, per internal NIC of the data plane: every prefix the kernel routes
/// through one (connected, or via a router behind it), those holding an address of the gateway
/// first. The one place they are computed: the topology checks (pool ranges, fixed IPs) and the
/// API's internal networks and ports read them here.
pub(super) fn internal_networks(maps: &Dataplane) -> Result<Vec<InternalNetwork>> {
    let routes = iface::routes()?;
    let addrs = iface::networks()?;
    let mut out = Vec::new();
    for (idx, _) in maps.nics(Role::Internal)? {
        let Some(name) = iface::name(idx) else {
            continue;
        };
        let mut subnets: Vec<TenantSubnet> = routes
            .iter()
            // A default route through a tenant network says nothing about which addresses live
            // there.
            .filter(|r| r.oif == idx && r.len > 0)
            .map(|r| {
                let (network, _) = prefix_span(r.dst, r.len);
                let mut s = TenantSubnet {
                    network,
                    prefix_len: r.len,
                    gateway: None,
                };
                s.gateway = addrs
                    .iter()
                    .find(|(n, a, _)| *n == name && s.contains(*a))
                    .map(|(_, a, _)| *a);
                s
            })
            .collect();
        subnets.sort_by_key(|s| (s.gateway.is_none(), s.network, s.prefix_len));
        subnets.dedup_by_key(|s| (s.network, s.prefix_len));
        out.push(InternalNetwork { name, subnets });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// An internal network: an internal NIC of the attached data plane and its subnets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InternalNetwork {
    /// The interface name, which is also the network's name.
    pub name: String,
    pub subnets: Vec<TenantSubnet>,
}

/// A port: the stored row is all there is to present.
pub use crate::store::PortRow as Port;

/// A new port; `fixed_ip: None` takes the lowest free host address of the network's first
/// subnet.
#[derive(Clone, Debug, Default)]
pub struct NewPort<'a> {
    pub network: &'a str,
    pub fixed_ip: Option<Ipv4Addr>,
    pub name: &'a str,
    pub device_id: &'a str,
    pub device_owner: &'a str,
    pub project: &'a str,
    pub description: &'a str,
}

/// Changes to a port; `None` keeps the field.
#[derive(Clone, Debug, Default)]
pub struct PortChange<'a> {
    pub name: Option<&'a str>,
    pub device_id: Option<&'a str>,
    pub device_owner: Option<&'a str>,
    pub description: Option<&'a str>,
}

/// A floating IP with what the Neutron model adds: the port its fixed IP belongs to, and
/// whether the maps hold the pair (Neutron's `ACTIVE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FloatingIpState {
    pub ip: FloatingIp,
    pub port_id: Option<String>,
    /// The data plane maps the floating IP to its fixed IP.
    pub mapped: bool,
}

/// Adds the port and the map state to `ip`.
fn with_state(tx: &Tx<'_>, maps: Option<&Dataplane>, ip: FloatingIp) -> Result<FloatingIpState> {
    let (port_id, mapped) = match ip.fixed_ip_address {
        Some(f) => (
            tx.port_by_fixed(f)?.map(|p| p.id),
            // Map lookups failing count as not held: the status says what is known to work.
            maps.is_some_and(|m| m.fixed_of(ip.floating_ip_address).ok().flatten() == Some(f)),
        ),
        None => (None, false),
    };
    Ok(FloatingIpState {
        ip,
        port_id,
        mapped,
    })
}

fn port_not_found(id: &str) -> anyhow::Error {
    error(ErrorKind::NotFound, format!("port {id} not found"))
}

fn floating_not_found(id: i64) -> anyhow::Error {
    error(ErrorKind::NotFound, format!("floating IP {id} not found"))
}

fn check_port_fields(
    name: &str,
    device_id: &str,
    device_owner: &str,
    description: &str,
) -> Result<()> {
    for (what, v) in [
        ("port name", name),
        ("device_id", device_id),
        ("device_owner", device_owner),
    ] {
        validate_text(what, v, 255).map_err(|e| error(ErrorKind::Invalid, format!("{e:#}")))?;
    }
    validate_text("description", description, 255)
        .map_err(|e| error(ErrorKind::Invalid, format!("{e:#}")))
}

/// The port as `project` sees it: another project's port is a missing one.
fn visible_port(row: Option<PortRow>, id: &str, project: Option<&str>) -> Result<PortRow> {
    match row {
        Some(p) if project.is_none_or(|pr| p.project == pr) => Ok(p),
        _ => Err(port_not_found(id)),
    }
}

impl Control {
    /// The internal NICs of the attached data plane with their subnets; none when detached.
    pub fn internal_networks(&mut self) -> Result<Vec<InternalNetwork>> {
        let (_, maps) = self.parts()?;
        maps.map_or_else(|| Ok(Vec::new()), |dp| internal_networks(dp))
    }

    /// Creates a port on an internal network for `project`.
    pub fn port_create(&mut self, req: &NewPort<'_>) -> Result<Port> {
        validate_name("project", req.project, 255)
            .map_err(|e| error(ErrorKind::Invalid, format!("{e:#}")))?;
        check_port_fields(req.name, req.device_id, req.device_owner, req.description)?;
        let network = self
            .internal_networks()?
            .into_iter()
            .find(|n| n.name == req.network)
            .ok_or_else(|| {
                error(
                    ErrorKind::NotFound,
                    format!("network {} not found", req.network),
                )
            })?;
        let id = uuid::Uuid::new_v4().to_string();
        self.store.write(|tx| {
            let fixed = match req.fixed_ip {
                Some(ip) => {
                    let Some(subnet) = network.subnets.iter().find(|s| s.contains(ip)) else {
                        return Err(error(
                            ErrorKind::Invalid,
                            format!(
                                "IP address {ip} is not in a subnet of network {}",
                                network.name
                            ),
                        ));
                    };
                    if !subnet.hosts()?.contains(ip) {
                        return Err(error(
                            ErrorKind::Invalid,
                            format!("IP address {ip} is not a host address an instance may hold"),
                        ));
                    }
                    if tx.port_by_fixed(ip)?.is_some() {
                        return Err(error(
                            ErrorKind::Conflict,
                            format!(
                                "IP address {ip} is already allocated on network {}",
                                network.name
                            ),
                        ));
                    }
                    ip
                }
                None => {
                    let mut found = None;
                    for subnet in &network.subnets {
                        let hosts = subnet.hosts()?;
                        let mut taken: Vec<Ipv4Addr> = tx
                            .port_list(None)?
                            .into_iter()
                            .map(|p| p.fixed_ip)
                            .filter(|ip| subnet.contains(*ip))
                            .collect();
                        taken.sort_unstable();
                        if let Some(ip) = hosts.lowest_free(&taken) {
                            found = Some(ip);
                            break;
                        }
                    }
                    found.ok_or_else(|| {
                        error(
                            ErrorKind::Conflict,
                            format!("no more IP addresses on network {}", network.name),
                        )
                    })?
                }
            };
            tx.port_insert(&PortRow {
                id: id.clone(),
                network: network.name.clone(),
                fixed_ip: fixed,
                name: req.name.to_owned(),
                device_id: req.device_id.to_owned(),
                device_owner: req.device_owner.to_owned(),
                project: req.project.to_owned(),
                description: req.description.to_owned(),
                created_at: String::new(),
            })
        })
    }

    /// Every port `project` may see (every port for `None`).
    pub fn port_list(&mut self, project: Option<&str>) -> Result<Vec<Port>> {
        self.store.read(|tx| tx.port_list(project))
    }

    pub fn port_show(&mut self, id: &str, project: Option<&str>) -> Result<Port> {
        self.store
            .read(|tx| visible_port(tx.port_get(id)?, id, project))
    }

    pub fn port_update(
        &mut self,
        id: &str,
        project: Option<&str>,
        change: &PortChange<'_>,
    ) -> Result<Port> {
        self.store.write(|tx| {
            let mut row = visible_port(tx.port_get(id)?, id, project)?;
            for (field, value) in [
                (&mut row.name, change.name),
                (&mut row.device_id, change.device_id),
                (&mut row.device_owner, change.device_owner),
                (&mut row.description, change.description),
            ] {
                if let Some(v) = value {
                    *field = v.to_owned();
                }
            }
            check_port_fields(
                &row.name,
                &row.device_id,
                &row.device_owner,
                &row.description,
            )?;
            tx.port_update(&row)?;
            Ok(tx.port_get(id)?.expect("just updated"))
        })
    }

    /// Deletes a port. Like Neutron, a floating IP on it is disassociated first; the port
    /// row goes only once that succeeded.
    pub fn port_delete(&mut self, id: &str, project: Option<&str>) -> Result<()> {
        let port = self.port_show(id, project)?;
        let holder = self.store.read(|tx| tx.ip_by_fixed(port.fixed_ip))?;
        if let Some(ip) = holder {
            self.ip_disassociate(ip.address, None)?;
        }
        self.store.write(|tx| {
            if !tx.port_delete(id)? {
                return Err(port_not_found(id));
            }
            Ok(())
        })
    }

    /// The floating IP with row id `id` as `project` sees it.
    pub fn ip_by_id(&mut self, id: i64, project: Option<&str>) -> Result<FloatingIpState> {
        let row = self.store.read(|tx| {
            let row = tx.ip_get_by_id(id)?.ok_or_else(|| floating_not_found(id))?;
            owned_ip(tx, row.address, project).map_err(|_| floating_not_found(id))
        })?;
        self.ip_state(row)
    }

    /// [`Control::ip_list`] with ports and map state.
    pub fn ip_list_states(&mut self, query: &IpQuery<'_>) -> Result<Vec<FloatingIpState>> {
        let rows: Vec<FloatingIp> = self.ip_list(query)?;
        let (store, maps) = self.parts()?;
        let maps = maps.map(|m| &*m);
        store.read(|tx| {
            rows.into_iter()
                .map(|ip| with_state(tx, maps, ip))
                .collect()
        })
    }

    fn ip_state(&mut self, row: FloatingIpRow) -> Result<FloatingIpState> {
        let (store, maps) = self.parts()?;
        let maps = maps.map(|m| &*m);
        store.read(|tx| with_state(tx, maps, FloatingIp::from(row)))
    }

    /// Associates the floating IP with the port (moving it from another port), or with
    /// `None` disassociates it. Both must be visible to `project`.
    pub fn ip_set_port(
        &mut self,
        id: i64,
        port_id: Option<&str>,
        project: Option<&str>,
    ) -> Result<FloatingIpState> {
        let current = self.ip_by_id(id, project)?;
        let floating = current.ip.floating_ip_address;
        match port_id {
            None => {
                self.ip_disassociate(floating, project)?;
            }
            Some(pid) => {
                let port = self.port_show(pid, project)?;
                if current
                    .ip
                    .project
                    .as_deref()
                    .is_some_and(|p| p != port.project)
                {
                    return Err(error(
                        ErrorKind::NotFound,
                        format!("port {pid} not found in the floating IP's project"),
                    ));
                }
                let instance = [&port.name, &port.device_id]
                    .into_iter()
                    .find(|s| !s.is_empty() && validate_name("instance", s, 255).is_ok())
                    .map(String::as_str);
                self.ip_associate(&Associate {
                    floating,
                    fixed: port.fixed_ip,
                    instance,
                    project,
                    force: true,
                })
                .map_err(|e| match crate::error::kind_of(&e) {
                    // Neutron's wording: the port's address is taken.
                    ErrorKind::Conflict => error(
                        ErrorKind::Conflict,
                        format!("port {pid} already has a floating IP: {e:#}"),
                    ),
                    _ => e,
                })?;
            }
        }
        self.ip_by_id(id, project)
    }

    /// Allocates a floating IP and, with `port_id`, associates it; if the association fails
    /// the allocation is taken back, so a failed create leaves nothing behind.
    pub fn ip_create_on_port(
        &mut self,
        pool: &str,
        address: Option<Ipv4Addr>,
        project: Option<&str>,
        description: Option<&str>,
        port_id: Option<&str>,
    ) -> Result<FloatingIpState> {
        if let Some(pid) = port_id {
            // Checked before allocating: most failures then never allocate.
            self.port_show(pid, project)?;
        }
        let created = self.ip_create(pool, address, project, description)?;
        if let Some(pid) = port_id
            && let Err(e) = self.ip_set_port(created.id, Some(pid), project)
        {
            if let Err(undo) = self.ip_delete(created.floating_ip_address, None) {
                eprintln!(
                    "floatip: cannot release {} after a failed association: {undo:#}",
                    created.floating_ip_address
                );
            }
            return Err(e);
        }
        self.ip_by_id(created.id, project)
    }

    /// Sets (or with `None` clears) the description: [`Control::ip_update`], as `ip set`.
    pub fn ip_set_description(
        &mut self,
        id: i64,
        project: Option<&str>,
        description: Option<&str>,
    ) -> Result<FloatingIpState> {
        let change = IpChange {
            description: Some(description),
            ..Default::default()
        };
        self.ip_update(id, project, &change)?;
        self.ip_by_id(id, project)
    }

    /// Removes the project's quota (back to unlimited).
    pub fn quota_delete(&mut self, project: &str) -> Result<()> {
        self.store.write(|tx| tx.quota_delete(project).map(drop))
    }
}
