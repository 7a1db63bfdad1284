//! `GET /` (the version document, unauthenticated like Neutron's), `GET /v2.0/` (the
//! resources) and `GET /v2.0/extensions` (what this subset implements).

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, Uri, header},
    routing::get,
};
use serde_json::{Value, json};

use super::{
    Shared,
    error::{ApiError, ApiResult},
};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v2.0", get(resources))
        .route("/v2.0/", get(resources))
        .route("/v2.0/extensions", get(extensions))
        .route("/v2.0/extensions/{alias}", get(extension))
}

/// `scheme://host` the client used, for the links: the Host header, or the request's
/// authority (HTTP/2 has no Host header).
pub fn base_url(headers: &HeaderMap, uri: &Uri, tls: bool) -> String {
    let authority = uri.authority().map(|a| a.as_str().to_owned());
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or(authority);
    let host = host
        .as_deref()
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("127.0.0.1:9696");
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

pub async fn root(State(api): State<Shared>, headers: HeaderMap, uri: Uri) -> Json<Value> {
    let base = base_url(&headers, &uri, api.tls);
    Json(json!({"versions": [{
        "id": "v2.0",
        "status": "CURRENT",
        "links": [{"href": format!("{base}/v2.0/"), "rel": "self"}],
    }]}))
}

async fn resources(State(api): State<Shared>, headers: HeaderMap, uri: Uri) -> Json<Value> {
    let base = base_url(&headers, &uri, api.tls);
    let list: Vec<Value> = [
        ("network", "networks"),
        ("subnet", "subnets"),
        ("port", "ports"),
        ("floatingip", "floatingips"),
        ("quota", "quotas"),
    ]
    .iter()
    .map(|(name, collection)| {
        json!({"name": name, "collection": collection,
               "links": [{"href": format!("{base}/v2.0/{collection}"), "rel": "self"}]})
    })
    .collect();
    Json(json!({ "resources": list }))
}

/// (alias, name, description) of the extensions this subset implements.
const EXTENSIONS: &[(&str, &str, &str)] = &[
    (
        "external-net",
        "Neutron external network",
        "Adds external network attribute to network resource.",
    ),
    (
        "quotas",
        "Quota management support",
        "Expose functions for quotas management per project (floatingip only).",
    ),
    (
        "quota_details",
        "Quota details management support",
        "Expose functions for quotas usage statistics per project.",
    ),
    (
        "project-id",
        "project_id field enabled",
        "Extension that indicates that project_id field is enabled.",
    ),
    (
        "standard-attr-description",
        "standard-attr-description",
        "Extension to add descriptions to standard attributes.",
    ),
    (
        "standard-attr-timestamp",
        "Resource timestamps",
        "Adds created_at and updated_at fields to all Neutron resources.",
    ),
    (
        "standard-attr-tag",
        "Tag support for resources with standard attribute: floatingip",
        "Enables to set tag on floating IPs, and to filter lists by them.",
    ),
    (
        "pagination",
        "Pagination support",
        "Extension that indicates that pagination is enabled.",
    ),
    (
        "sorting",
        "Sorting support",
        "Extension that indicates that sorting is enabled.",
    ),
    (
        "filter-validation",
        "Filter parameters validation",
        "Provides validation on filter parameters.",
    ),
];

fn extension_view(&(alias, name, description): &(&str, &str, &str)) -> Value {
    json!({"alias": alias, "name": name, "description": description,
           "updated": "2024-01-01T00:00:00-00:00", "links": []})
}

async fn extensions() -> Json<Value> {
    Json(json!({"extensions": EXTENSIONS.iter().map(extension_view).collect::<Vec<_>>()}))
}

async fn extension(Path(alias): Path<String>) -> ApiResult<Json<Value>> {
    EXTENSIONS
        .iter()
        .find(|e| e.0 == alias)
        .map(|e| Json(json!({"extension": extension_view(e)})))
        .ok_or_else(|| {
            ApiError::not_found(
                "ExtensionNotFound",
                format!("extension {alias} not supported"),
            )
        })
}
