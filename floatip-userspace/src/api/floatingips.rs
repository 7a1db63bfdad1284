//! `floatingips`: allocate from a pool (an external network), associate with a port, move,
//! disassociate, release. `status` is `ACTIVE` only while the maps hold the pair.

use axum::{
    Extension, Json, Router,
    body::Body,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    routing::get,
};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::{
    Shared,
    auth::Caller,
    error::{ApiError, ApiResult},
    ids,
    networks::Topology,
    ports::acting_project,
    query::{ListQuery, select_fields},
    tags,
};
use crate::{
    addr::parse_ipv4,
    control::{IpQuery, ports::FloatingIpState},
};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v2.0/floatingips", get(list).post(create))
        .route(
            "/v2.0/floatingips/{id}",
            get(show).put(update).delete(delete),
        )
        .route(
            "/v2.0/floatingips/{id}/tags",
            get(tags::list).put(tags::replace).delete(tags::clear),
        )
        .route(
            "/v2.0/floatingips/{id}/tags/{tag}",
            get(tags::check).put(tags::add).delete(tags::remove),
        )
}

const FIP_FIELDS: &[&str] = &[
    "id",
    "floating_ip_address",
    "fixed_ip_address",
    "port_id",
    "status",
    "project_id",
    "tenant_id",
    "floating_network_id",
    "description",
    "router_id",
    "created_at",
    "updated_at",
    "tags",
];

pub(super) const NOT_FOUND: &str = "FloatingIPNotFound";

fn view(s: &FloatingIpState) -> Value {
    let ip = &s.ip;
    let project = ip.project.clone().unwrap_or_default();
    json!({
        "id": ids::floating(ip.id),
        "floating_ip_address": ip.floating_ip_address,
        "fixed_ip_address": ip.fixed_ip_address,
        "floating_network_id": ids::pool_network(&ip.pool),
        "port_id": s.port_id,
        "router_id": null,
        "status": if s.mapped { "ACTIVE" } else { "DOWN" },
        "project_id": project, "tenant_id": project,
        "description": ip.description.clone().unwrap_or_default(),
        "created_at": ip.created_at, "updated_at": ip.created_at,
        "revision_number": 0, "tags": ip.tags, "dns_domain": "", "dns_name": "",
        "port_forwardings": [], "qos_policy_id": null,
    })
}

/// The row id in `id`; anything that is not a floating IP id is simply not found.
pub(super) fn row_id(id: &str) -> ApiResult<i64> {
    ids::parse_floating(id).ok_or_else(|| {
        ApiError::not_found(NOT_FOUND, format!("floating IP {id} could not be found"))
    })
}

async fn list(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse_with(q.as_deref(), FIP_FIELDS, &tags::FILTERS)?;
    let [tags, any_tags, not_tags, not_any_tags] = tags::FILTERS.map(|k| query.list_param(k));
    // Narrowed in the database where a filter allows; the rest is filtered on the records.
    let project = caller.scope().or_else(|| {
        query
            .single("project_id")
            .or(query.single("tenant_id"))
            .map(str::to_owned)
    });
    let pool = match query.single("floating_network_id") {
        Some(net) => match Topology::load(&api).await?.pool_by_network(net) {
            Some(p) => Some(p.name.clone()),
            None => {
                return Ok(Json(query.apply(
                    "floatingips",
                    "/v2.0/floatingips",
                    Vec::new(),
                )?));
            }
        },
        None => None,
    };
    let states = api
        .control(NOT_FOUND, move |c| {
            c.ip_list_states(&IpQuery {
                pool: pool.as_deref(),
                project: project.as_deref(),
                tags: &tags,
                any_tags: &any_tags,
                not_tags: &not_tags,
                not_any_tags: &not_any_tags,
                ..Default::default()
            })
        })
        .await?;
    Ok(Json(query.apply(
        "floatingips",
        "/v2.0/floatingips",
        states.iter().map(view).collect(),
    )?))
}

async fn show(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let state = by_id(&api, &caller, &id).await?;
    Ok(Json(
        json!({"floatingip": select_fields(q.as_deref(), FIP_FIELDS, view(&state))?}),
    ))
}

/// The floating IP `id` as `caller` may see it.
pub(super) async fn by_id(api: &Shared, caller: &Caller, id: &str) -> ApiResult<FloatingIpState> {
    let row = row_id(id)?;
    let scope = caller.scope();
    api.control(NOT_FOUND, move |c| c.ip_by_id(row, scope.as_deref()))
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FloatingIpCreate {
    floating_network_id: String,
    floating_ip_address: Option<String>,
    subnet_id: Option<String>,
    port_id: Option<String>,
    fixed_ip_address: Option<String>,
    description: Option<String>,
    project_id: Option<String>,
    tenant_id: Option<String>,
}

/// Checks `fixed_ip_address` against the port's one fixed IP (ports here have exactly one).
async fn check_fixed(
    api: &Shared,
    caller: &Caller,
    port: Option<&str>,
    fixed: Option<&str>,
) -> ApiResult<()> {
    let Some(fixed) = fixed else { return Ok(()) };
    let Some(port) = port.map(str::to_owned) else {
        return Err(ApiError::bad_request("fixed_ip_address needs a port_id"));
    };
    let fixed = parse_ipv4(fixed)
        .map_err(|e| ApiError::bad_request(format!("invalid fixed_ip_address: {e:#}")))?;
    let scope = caller.scope();
    let p = api
        .control("PortNotFound", move |c| {
            c.port_show(&port, scope.as_deref())
        })
        .await?;
    if p.fixed_ip != fixed {
        return Err(ApiError::bad_request(format!(
            "port {} has no fixed IP {fixed} (it has {})",
            p.id, p.fixed_ip
        )));
    }
    Ok(())
}

async fn create(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: FloatingIpCreate = api.body(body, "floatingip").await?;
    let project = acting_project(&caller, req.project_id, req.tenant_id)?;
    let topo = Topology::load(&api).await?;
    if topo.internal_by_network(&req.floating_network_id).is_some() {
        return Err(ApiError::bad_request(format!(
            "network {} is not an external network",
            req.floating_network_id
        )));
    }
    let pool = topo
        .pool_by_network(&req.floating_network_id)
        .ok_or_else(|| {
            ApiError::not_found(
                "NetworkNotFound",
                format!("network {} could not be found", req.floating_network_id),
            )
        })?
        .name
        .clone();
    if let Some(subnet) = &req.subnet_id
        && *subnet != ids::pool_subnet(&pool)
    {
        return Err(ApiError::bad_request(format!(
            "subnet {subnet} is not a subnet of network {}",
            req.floating_network_id
        )));
    }
    let address = req
        .floating_ip_address
        .as_deref()
        .map(parse_ipv4)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("invalid floating_ip_address: {e:#}")))?;
    check_fixed(
        &api,
        &caller,
        req.port_id.as_deref(),
        req.fixed_ip_address.as_deref(),
    )
    .await?;
    let (description, port) = (req.description, req.port_id);
    let state = api
        .control(NOT_FOUND, move |c| {
            c.ip_create_on_port(
                &pool,
                address,
                Some(&project),
                description.as_deref(),
                port.as_deref(),
            )
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"floatingip": view(&state)})),
    ))
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FloatingIpUpdate {
    #[serde(default, deserialize_with = "present")]
    port_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    fixed_ip_address: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
}

async fn update(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let row = row_id(&id)?;
    let req: FloatingIpUpdate = api.body(body, "floatingip").await?;
    let port = req.port_id.clone().flatten();
    match &req.fixed_ip_address {
        Some(Some(fixed)) => check_fixed(&api, &caller, port.as_deref(), Some(fixed)).await?,
        Some(None) if port.is_some() => {
            return Err(ApiError::bad_request(
                "fixed_ip_address cannot be cleared while setting port_id",
            ));
        }
        _ => {}
    }
    let scope = caller.scope();
    let state = api
        .control(NOT_FOUND, move |c| {
            let before = c.ip_by_id(row, scope.as_deref())?;
            let mut state = before.clone();
            if let Some(description) = &req.description {
                state = c.ip_set_description(row, scope.as_deref(), description.as_deref())?;
            }
            if let Some(port) = &req.port_id {
                match c.ip_set_port(row, port.as_deref(), scope.as_deref()) {
                    Ok(s) => state = s,
                    Err(e) => {
                        // All or nothing: put the description back.
                        if req.description.is_some() {
                            let _ = c.ip_set_description(
                                row,
                                scope.as_deref(),
                                before.ip.description.as_deref(),
                            );
                        }
                        return Err(e);
                    }
                }
            }
            Ok(state)
        })
        .await?;
    Ok(Json(json!({"floatingip": view(&state)})))
}

async fn delete(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let row = row_id(&id)?;
    let scope = caller.scope();
    api.control(NOT_FOUND, move |c| {
        let state = c.ip_by_id(row, scope.as_deref())?;
        c.ip_delete(state.ip.floating_ip_address, scope.as_deref())
            .map(drop)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
