//! `ports`: an instance's fixed IP on an internal network. Created by an admin (for any
//! project) or by a member (for its own); another project's port is not found.

use std::net::Ipv4Addr;

use axum::{
    Extension, Json, Router,
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
    networks::Topology,
    query::{ListQuery, select_fields},
};
use crate::{
    addr::parse_ipv4,
    control::ports::{InternalNetwork, NewPort, Port, PortChange},
};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v2.0/ports", get(list).post(create))
        .route("/v2.0/ports/{id}", get(show).put(update).delete(delete))
}

const PORT_FIELDS: &[&str] = &[
    "id",
    "name",
    "network_id",
    "fixed_ips",
    "device_id",
    "device_owner",
    "project_id",
    "tenant_id",
    "status",
    "admin_state_up",
    "mac_address",
    "description",
    "created_at",
    "updated_at",
];

const NOT_FOUND: &str = "PortNotFound";

/// The project a create acts for: a member's own (naming another is 403), an admin's choice.
pub fn acting_project(
    caller: &Caller,
    project_id: Option<String>,
    tenant_id: Option<String>,
) -> ApiResult<String> {
    let asked = match (project_id, tenant_id) {
        (Some(p), Some(t)) if p != t => {
            return Err(ApiError::bad_request("project_id and tenant_id differ"));
        }
        (p, t) => p.or(t),
    };
    match asked {
        Some(p) if p != caller.project => {
            caller.require_admin("acting for another project")?;
            Ok(p)
        }
        _ => Ok(caller.project.clone()),
    }
}

/// A MAC address derived from the port id, in the OpenStack `fa:16:3e` range: ports here do
/// not own the instance's NIC, but clients expect the field.
fn mac_of(id: &str) -> String {
    let b = uuid::Uuid::parse_str(id)
        .map(|u| *u.as_bytes())
        .unwrap_or_default();
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[13], b[14], b[15])
}

pub fn port_view(p: &Port, networks: &[InternalNetwork]) -> Value {
    let subnet = networks
        .iter()
        .find(|n| n.name == p.network)
        .and_then(|n| n.subnets.iter().find(|s| s.contains(p.fixed_ip)))
        .map(|s| ids::internal_subnet(&p.network, s));
    json!({
        "id": p.id, "name": p.name, "network_id": ids::internal_network(&p.network),
        "fixed_ips": [{"subnet_id": subnet, "ip_address": p.fixed_ip}],
        "device_id": p.device_id, "device_owner": p.device_owner,
        "project_id": p.project, "tenant_id": p.project,
        "status": "ACTIVE", "admin_state_up": true, "mac_address": mac_of(&p.id),
        "description": p.description, "created_at": p.created_at, "updated_at": p.created_at,
        "security_groups": [], "allowed_address_pairs": [], "extra_dhcp_opts": [], "tags": [],
        "revision_number": 0, "port_security_enabled": false,
    })
}

async fn list(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(q.as_deref(), PORT_FIELDS)?;
    let scope = caller.scope();
    let (ports, networks) = api
        .control(NOT_FOUND, move |c| {
            Ok((c.port_list(scope.as_deref())?, c.internal_networks()?))
        })
        .await?;
    let items = ports.iter().map(|p| port_view(p, &networks)).collect();
    Ok(Json(query.apply("ports", "/v2.0/ports", items)?))
}

async fn show(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let scope = caller.scope();
    let (port, networks) = api
        .control(NOT_FOUND, move |c| {
            Ok((c.port_show(&id, scope.as_deref())?, c.internal_networks()?))
        })
        .await?;
    Ok(Json(
        json!({"port": select_fields(q.as_deref(), PORT_FIELDS, port_view(&port, &networks))?}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixedIpRequest {
    ip_address: Option<String>,
    subnet_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortCreate {
    network_id: String,
    #[serde(default)]
    fixed_ips: Vec<FixedIpRequest>,
    name: Option<String>,
    device_id: Option<String>,
    device_owner: Option<String>,
    description: Option<String>,
    project_id: Option<String>,
    tenant_id: Option<String>,
    admin_state_up: Option<bool>,
}

async fn create(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: PortCreate = api.body(body, "port").await?;
    let project = acting_project(&caller, req.project_id, req.tenant_id)?;
    if req.admin_state_up == Some(false) {
        return Err(ApiError::bad_request(
            "ports here are always up: admin_state_up must be true",
        ));
    }
    let topo = Topology::load(&api).await?;
    if topo.pool_by_network(&req.network_id).is_some() {
        return Err(ApiError::bad_request(format!(
            "network {} is external: ports go on internal networks",
            req.network_id
        )));
    }
    let network = topo.internal_by_network(&req.network_id).ok_or_else(|| {
        ApiError::not_found(
            "NetworkNotFound",
            format!("network {} could not be found", req.network_id),
        )
    })?;
    let fixed_ip = match req.fixed_ips.as_slice() {
        [] => None,
        [one] => {
            let ip: Option<Ipv4Addr> = one
                .ip_address
                .as_deref()
                .map(parse_ipv4)
                .transpose()
                .map_err(|e| ApiError::bad_request(format!("invalid ip_address: {e:#}")))?;
            if let Some(subnet) = &one.subnet_id {
                let s = network
                    .subnets
                    .iter()
                    .find(|s| ids::internal_subnet(&network.name, s) == *subnet)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "subnet {subnet} is not a subnet of network {}",
                            req.network_id
                        ))
                    })?;
                if ip.is_some_and(|ip| !s.contains(ip)) {
                    return Err(ApiError::bad_request(format!(
                        "ip_address is not in subnet {subnet}"
                    )));
                }
            }
            ip
        }
        _ => {
            return Err(ApiError::bad_request(
                "a port here has exactly one fixed IP",
            ));
        }
    };
    let iface = network.name.clone();
    let (name, device_id, device_owner, description) = (
        req.name.unwrap_or_default(),
        req.device_id.unwrap_or_default(),
        req.device_owner.unwrap_or_default(),
        req.description.unwrap_or_default(),
    );
    let (port, networks) = api
        .control(NOT_FOUND, move |c| {
            let port = c.port_create(&NewPort {
                network: &iface,
                fixed_ip,
                name: &name,
                device_id: &device_id,
                device_owner: &device_owner,
                project: &project,
                description: &description,
            })?;
            Ok((port, c.internal_networks()?))
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"port": port_view(&port, &networks)})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortUpdate {
    name: Option<String>,
    device_id: Option<String>,
    device_owner: Option<String>,
    description: Option<String>,
}

async fn update(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let req: PortUpdate = api.body(body, "port").await?;
    let scope = caller.scope();
    let (port, networks) = api
        .control(NOT_FOUND, move |c| {
            let change = PortChange {
                name: req.name.as_deref(),
                device_id: req.device_id.as_deref(),
                device_owner: req.device_owner.as_deref(),
                description: req.description.as_deref(),
            };
            Ok((
                c.port_update(&id, scope.as_deref(), &change)?,
                c.internal_networks()?,
            ))
        })
        .await?;
    Ok(Json(json!({"port": port_view(&port, &networks)})))
}

async fn delete(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let scope = caller.scope();
    api.control(NOT_FOUND, move |c| c.port_delete(&id, scope.as_deref()))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
