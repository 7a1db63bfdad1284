//! `GET /v2.0/floatip/gateways` (admin): the gateway group when the state is in etcd — each
//! gateway, whether it is alive, the revision of the state it has applied and the pools it
//! answers for — beside the store's revision. floatip's own resource, in the manner of
//! Neutron's `/v2.0/agents`; on SQLite the one gateway is the whole list.

use axum::{Extension, Json, Router, extract::State, routing::get};
use serde_json::{Value, json};

use super::{Shared, auth::Caller, error::ApiResult};

pub fn routes() -> Router<Shared> {
    Router::new().route("/v2.0/floatip/gateways", get(list))
}

async fn list(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.require_admin("list gateways")?;
    let view = api.control("HTTPNotFound", |c| c.group_view()).await?;
    Ok(Json(match view {
        Some(v) => json!({ "gateways": v.gateways(), "store_revision": v.revision }),
        None => json!({ "gateways": [], "store_revision": null }),
    }))
}
