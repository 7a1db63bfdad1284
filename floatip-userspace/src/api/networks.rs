//! `networks` and `subnets`: pools are external networks (one subnet each, its ranges as
//! `allocation_pools`), the gateway's internal NICs are internal networks with their
//! configured prefixes as subnets (read-only: they are the gateway's interfaces).

use std::net::Ipv4Addr;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Shared,
    auth::Caller,
    error::{ApiError, ApiResult},
    ids,
    query::{ListQuery, select_fields},
};
use crate::{
    addr::PoolRanges,
    control::{
        Pool,
        ports::{InternalNetwork, TenantSubnet},
    },
};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v2.0/networks", get(list_networks).post(create_network))
        .route(
            "/v2.0/networks/{id}",
            get(show_network).delete(delete_network),
        )
        .route("/v2.0/subnets", get(list_subnets))
        .route("/v2.0/subnets/{id}", get(show_subnet))
}

const NETWORK_FIELDS: &[&str] = &[
    "id",
    "name",
    "status",
    "admin_state_up",
    "shared",
    "router:external",
    "subnets",
    "project_id",
    "tenant_id",
    "description",
    "mtu",
    "created_at",
    "updated_at",
];

const SUBNET_FIELDS: &[&str] = &[
    "id",
    "name",
    "network_id",
    "ip_version",
    "cidr",
    "gateway_ip",
    "allocation_pools",
    "enable_dhcp",
    "project_id",
    "tenant_id",
    "description",
    "created_at",
    "updated_at",
];

/// What both collections are made from.
pub struct Topology {
    pub pools: Vec<Pool>,
    pub internal: Vec<InternalNetwork>,
}

impl Topology {
    pub async fn load(api: &Shared) -> ApiResult<Self> {
        let (pools, internal) = api
            .control("NetworkNotFound", |c| {
                Ok((c.pool_list()?, c.internal_networks()?))
            })
            .await?;
        Ok(Self { pools, internal })
    }

    /// The pool whose network id is `id`.
    pub fn pool_by_network(&self, id: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| ids::pool_network(&p.name) == id)
    }

    pub fn internal_by_network(&self, id: &str) -> Option<&InternalNetwork> {
        self.internal
            .iter()
            .find(|n| ids::internal_network(&n.name) == id)
    }

    fn networks(&self) -> Vec<Value> {
        let pools = self.pools.iter().map(|p| {
            network_view(
                &ids::pool_network(&p.name),
                &p.name,
                true,
                &[ids::pool_subnet(&p.name)],
                &p.created_at,
            )
        });
        let internal = self.internal.iter().map(|n| {
            let subnets: Vec<String> = n
                .subnets
                .iter()
                .map(|s| ids::internal_subnet(&n.name, s))
                .collect();
            network_view(
                &ids::internal_network(&n.name),
                &n.name,
                false,
                &subnets,
                "",
            )
        });
        pools.chain(internal).collect()
    }

    fn subnets(&self) -> Vec<Value> {
        let pools = self.pools.iter().map(pool_subnet_view);
        let internal = self.internal.iter().flat_map(|n| {
            n.subnets
                .iter()
                .map(move |s| internal_subnet_view(&n.name, s))
        });
        pools.chain(internal).collect()
    }
}

fn network_view(id: &str, name: &str, external: bool, subnets: &[String], created: &str) -> Value {
    json!({
        "id": id, "name": name, "status": "ACTIVE", "admin_state_up": true,
        // Every project may put ports on the tenant subnets and take addresses from pools.
        "shared": !external, "router:external": external, "subnets": subnets,
        "project_id": "", "tenant_id": "", "description": "", "mtu": 1500,
        "created_at": created, "updated_at": created,
        "availability_zones": [], "ipv4_address_scope": null, "ipv6_address_scope": null,
        "is_default": false, "port_security_enabled": false, "tags": [], "revision_number": 0,
    })
}

fn subnet_view(
    id: &str,
    name: &str,
    network: &str,
    cidr: String,
    gateway: Option<Ipv4Addr>,
    pools: Vec<Value>,
    created: &str,
) -> Value {
    json!({
        "id": id, "name": name, "network_id": network, "ip_version": 4, "cidr": cidr,
        "gateway_ip": gateway, "allocation_pools": pools, "enable_dhcp": false,
        "dns_nameservers": [], "host_routes": [], "project_id": "", "tenant_id": "",
        "description": "", "created_at": created, "updated_at": created, "tags": [],
        "revision_number": 0, "subnetpool_id": null, "ipv6_address_mode": null, "ipv6_ra_mode": null,
    })
}

/// Smallest CIDR covering `first..=last`.
fn covering_cidr(first: u32, last: u32) -> String {
    let len = (first ^ last).leading_zeros().min(32);
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    format!("{}/{len}", Ipv4Addr::from(first & mask))
}

fn pool_subnet_view(p: &Pool) -> Value {
    let ranges = PoolRanges::parse(&p.ranges, &p.excludes).ok();
    let intervals = ranges
        .as_ref()
        .map(PoolRanges::usable_intervals)
        .unwrap_or_default();
    let first = ranges
        .as_ref()
        .and_then(|r| r.ranges().iter().map(|s| s.first()).min())
        .unwrap_or(0);
    let last = ranges
        .as_ref()
        .and_then(|r| r.ranges().iter().map(|s| s.last()).max())
        .unwrap_or(0);
    let pools = intervals
        .iter()
        .map(|(a, b)| json!({"start": a, "end": b}))
        .collect();
    subnet_view(
        &ids::pool_subnet(&p.name),
        &p.name,
        &ids::pool_network(&p.name),
        covering_cidr(first, last),
        None,
        pools,
        &p.created_at,
    )
}

fn internal_subnet_view(iface: &str, s: &TenantSubnet) -> Value {
    let pools = s
        .hosts()
        .map(|h| h.usable_intervals())
        .unwrap_or_default()
        .iter()
        .map(|(a, b)| json!({"start": a, "end": b}))
        .collect();
    subnet_view(
        &ids::internal_subnet(iface, s),
        &format!("{iface}-{}", s.network),
        &ids::internal_network(iface),
        format!("{}/{}", s.network, s.prefix_len),
        s.gateway,
        pools,
        "",
    )
}

fn network_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "NetworkNotFound",
        format!("network {id} could not be found"),
    )
}

async fn list_networks(State(api): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(q.as_deref(), NETWORK_FIELDS)?;
    let topo = Topology::load(&api).await?;
    Ok(Json(query.apply(
        "networks",
        "/v2.0/networks",
        topo.networks(),
    )?))
}

async fn show_network(
    State(api): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let topo = Topology::load(&api).await?;
    let net = topo
        .networks()
        .into_iter()
        .find(|n| n["id"] == id.as_str())
        .ok_or_else(|| network_not_found(&id))?;
    Ok(Json(
        json!({"network": select_fields(q.as_deref(), NETWORK_FIELDS, net)?}),
    ))
}

/// The body of a network create, checked for shape only (see [`create_network`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct NetworkCreate {
    name: Option<String>,
    #[serde(rename = "router:external")]
    external: Option<bool>,
    admin_state_up: Option<bool>,
    shared: Option<bool>,
    description: Option<String>,
    project_id: Option<String>,
    tenant_id: Option<String>,
}

/// Creating networks is an admin action. A pool needs its ranges when it is created, which
/// Neutron gives only later with the subnet, so pools are created with `floatip pool create`;
/// the API says so (see the README's list of what is not implemented).
async fn create_network(
    State(api): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Body,
) -> ApiResult<Json<Value>> {
    caller.require_admin("creating a network")?;
    let _: NetworkCreate = api.body(body, "network").await?;
    Err(ApiError::bad_request(
        "external networks are floating IP pools: create them on the gateway with `floatip pool create NAME --range CIDR`",
    ))
}

async fn delete_network(
    State(api): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin("deleting a network")?;
    let topo = Topology::load(&api).await?;
    if topo.internal_by_network(&id).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "NetworkInUse",
            format!("network {id} is an internal interface of the gateway and cannot be deleted"),
        ));
    }
    let pool = topo
        .pool_by_network(&id)
        .ok_or_else(|| network_not_found(&id))?
        .name
        .clone();
    api.control("NetworkNotFound", move |c| c.pool_delete(&pool))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_subnets(State(api): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(q.as_deref(), SUBNET_FIELDS)?;
    let topo = Topology::load(&api).await?;
    Ok(Json(query.apply(
        "subnets",
        "/v2.0/subnets",
        topo.subnets(),
    )?))
}

async fn show_subnet(
    State(api): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let topo = Topology::load(&api).await?;
    let subnet = topo
        .subnets()
        .into_iter()
        .find(|s| s["id"] == id.as_str())
        .ok_or_else(|| {
            ApiError::not_found("SubnetNotFound", format!("subnet {id} could not be found"))
        })?;
    Ok(Json(
        json!({"subnet": select_fields(q.as_deref(), SUBNET_FIELDS, subnet)?}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering() {
        let ip = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            covering_cidr(ip("203.0.113.0"), ip("203.0.113.255")),
            "203.0.113.0/24"
        );
        assert_eq!(
            covering_cidr(ip("203.0.113.10"), ip("203.0.113.20")),
            "203.0.113.0/27"
        );
        assert_eq!(
            covering_cidr(ip("203.0.113.5"), ip("203.0.113.5")),
            "203.0.113.5/32"
        );
    }
}
