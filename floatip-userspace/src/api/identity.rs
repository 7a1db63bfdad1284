//! The little of Keystone v3 that `openstack quota set/show PROJECT` needs to turn a project
//! name into an id: projects here are named by their id, and are those the state mentions.
//! Serve it by pointing the client's identity endpoint at `/identity/v3`.

use axum::{
    Extension, Json, Router,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, Uri},
    routing::get,
};
use serde_json::{Value, json};

use super::{
    Shared,
    auth::Caller,
    error::{ApiError, ApiResult},
    query::pairs,
    versions::base_url,
};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/identity/v3", get(version))
        .route("/identity/v3/", get(version))
        .route("/identity/v3/projects", get(list))
        .route("/identity/v3/projects/{id}", get(show))
}

async fn version(State(api): State<Shared>, headers: HeaderMap, uri: Uri) -> Json<Value> {
    let base = base_url(&headers, &uri, api.tls);
    Json(
        json!({"version": {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{base}/identity/v3/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]}}),
    )
}

fn project_view(name: &str) -> Value {
    json!({"id": name, "name": name, "domain_id": "default", "enabled": true, "is_domain": false,
           "parent_id": "default", "description": "", "tags": [], "links": {}})
}

async fn visible(api: &Shared, caller: &Caller) -> ApiResult<Vec<String>> {
    let all = api
        .control("ProjectNotFound", |c| c.project_names())
        .await?;
    Ok(all
        .into_iter()
        .filter(|p| caller.is_admin() || *p == caller.project)
        .collect())
}

async fn list(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let mut projects = visible(&api, &caller).await?;
    for (k, v) in pairs(q.as_deref()) {
        match k.as_str() {
            "name" | "id" => projects.retain(|p| *p == v),
            // The clients add these; there is one domain.
            "domain_id" | "is_domain" | "enabled" => {}
            _ => {
                return Err(ApiError::bad_request(format!(
                    "'{k}' is not a filter of projects"
                )));
            }
        }
    }
    Ok(Json(
        json!({"projects": projects.iter().map(|p| project_view(p)).collect::<Vec<_>>(), "links": {}}),
    ))
}

async fn show(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if !visible(&api, &caller).await?.contains(&id) {
        return Err(ApiError::not_found(
            "ProjectNotFound",
            format!("could not find project: {id}"),
        ));
    }
    Ok(Json(json!({"project": project_view(&id)})))
}
