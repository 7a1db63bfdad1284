//! `quotas`, floatingip only: `-1` is unlimited (no quota row). A member sees its own
//! project's; setting and resetting are admin actions.

use axum::{
    Extension, Json, Router,
    body::Body,
    extract::{Path, State},
    http::StatusCode,
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Shared,
    auth::Caller,
    error::{ApiError, ApiResult},
};
use crate::control::Quota;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v2.0/quotas", get(list))
        .route("/v2.0/quotas/{project}", get(show).put(set).delete(reset))
        .route("/v2.0/quotas/{project}/details", get(details))
        .route("/v2.0/quotas/{project}/details.json", get(details))
        .route("/v2.0/quotas/{project}/default", get(default))
}

const NOT_FOUND: &str = "HTTPNotFound";

fn limit(q: &Quota) -> i64 {
    q.limit.map_or(-1, i64::from)
}

/// A member may look at its own project only; others are not found.
fn visible(caller: &Caller, project: &str) -> ApiResult<()> {
    if caller.is_admin() || caller.project == project {
        Ok(())
    } else {
        Err(ApiError::not_found(
            NOT_FOUND,
            format!("project {project} could not be found"),
        ))
    }
}

async fn list(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    let quotas = api.control(NOT_FOUND, |c| c.quota_list()).await?;
    let items: Vec<Value> = quotas
        .iter()
        .filter(|q| caller.is_admin() || q.project == caller.project)
        .map(|q| json!({"project_id": q.project, "tenant_id": q.project, "floatingip": limit(q)}))
        .collect();
    Ok(Json(json!({ "quotas": items })))
}

async fn load(api: &Shared, caller: &Caller, project: String) -> ApiResult<Quota> {
    visible(caller, &project)?;
    api.control(NOT_FOUND, move |c| c.quota_show(&project))
        .await
}

async fn show(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    let q = load(&api, &caller, project).await?;
    Ok(Json(json!({"quota": {"floatingip": limit(&q)}})))
}

async fn details(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    let project = project
        .strip_suffix(".json")
        .map(str::to_owned)
        .unwrap_or(project);
    let q = load(&api, &caller, project).await?;
    Ok(Json(
        json!({"quota": {"floatingip": {"limit": limit(&q), "used": q.used, "reserved": 0}}}),
    ))
}

async fn default(
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    visible(&caller, &project)?;
    Ok(Json(json!({"quota": {"floatingip": -1}})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaUpdate {
    floatingip: Option<i64>,
    /// Refuse a limit below the current usage (what `openstack quota set` asks for).
    check_limit: Option<bool>,
    force: Option<bool>,
}

async fn set(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    caller.require_admin("setting a quota")?;
    let req: QuotaUpdate = api.body(body, "quota").await?;
    let check = req.check_limit.unwrap_or(false) && !req.force.unwrap_or(false);
    let q = match req.floatingip {
        None => {
            api.control(NOT_FOUND, move |c| c.quota_show(&project))
                .await?
        }
        Some(-1) => {
            api.control(NOT_FOUND, move |c| {
                c.quota_delete(&project)?;
                c.quota_show(&project)
            })
            .await?
        }
        Some(n) => {
            let n = u32::try_from(n).map_err(|_| {
                ApiError::bad_request(format!(
                    "floatingip quota must be -1 or 0 to {}, not {n}",
                    u32::MAX
                ))
            })?;
            api.control(NOT_FOUND, move |c| {
                if check {
                    let used = c.quota_show(&project)?.used;
                    if u64::from(n) < used {
                        return Err(crate::error::error(
                            crate::error::ErrorKind::Invalid,
                            format!("floatingip quota {n} is below the {used} floating IPs project {project} holds"),
                        ));
                    }
                }
                c.quota_set(&project, n)
            })
            .await?
        }
    };
    Ok(Json(json!({"quota": {"floatingip": limit(&q)}})))
}

async fn reset(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin("resetting a quota")?;
    api.control(NOT_FOUND, move |c| c.quota_delete(&project))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
