//! Neutron's tag extension (`standard-attr-tag`) on floating IPs: the `tags` sub-resource
//! (replace all, clear, check, add or remove one) and the list filters `tags`, `tags-any`,
//! `not-tags`, `not-tags-any`. Every change is one [`Control::ip_update`], as `ip set` and
//! `ip unset` make it, so it is all or nothing and validated in one place.
//!
//! [`Control::ip_update`]: crate::control::Control::ip_update

use axum::{
    Extension, Json,
    body::Body,
    extract::{Path, State},
    http::StatusCode,
};
use serde_json::{Value, json};

use super::{
    Shared,
    auth::Caller,
    error::{ApiError, ApiResult},
    floatingips::{NOT_FOUND, by_id, row_id},
};
use crate::control::{FloatingIp, IpChange};

/// The list parameters, in the order of [`crate::control::IpQuery`]'s tag fields.
pub const FILTERS: [&str; 4] = ["tags", "tags-any", "not-tags", "not-tags-any"];

/// Applies `change` (built over the request's tags) to the floating IP `id` for `caller`.
async fn update(
    api: &Shared,
    caller: &Caller,
    id: &str,
    tags: Vec<String>,
    change: fn(&[String]) -> IpChange<'_>,
) -> ApiResult<FloatingIp> {
    let row = row_id(id)?;
    let scope = caller.scope();
    api.control(NOT_FOUND, move |c| {
        c.ip_update(row, scope.as_deref(), &change(&tags))
    })
    .await
}

/// Whether floating IP `id` has `tag`.
async fn has(api: &Shared, caller: &Caller, id: &str, tag: &str) -> ApiResult<bool> {
    let state = by_id(api, caller, id).await?;
    Ok(state.ip.tags.iter().any(|t| t == tag))
}

fn tag_not_found(id: &str, tag: &str) -> ApiError {
    ApiError::not_found(
        "TagNotFound",
        format!("tag {tag} could not be found on floating IP {id}"),
    )
}

/// `GET .../tags`: `{"tags": [...]}`.
pub async fn list(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let state = by_id(&api, &caller, &id).await?;
    Ok(Json(json!({"tags": state.ip.tags})))
}

/// `PUT .../tags` with `{"tags": [...]}`: these and no others; answers with them.
pub async fn replace(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let tags: Vec<String> = api.body(body, "tags").await?;
    let record = update(&api, &caller, &id, tags, |tags| IpChange {
        clear_tags: true,
        add_tags: tags,
        ..Default::default()
    })
    .await?;
    Ok(Json(json!({"tags": record.tags})))
}

/// `DELETE .../tags`: every tag.
pub async fn clear(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    update(&api, &caller, &id, Vec::new(), |_| IpChange {
        clear_tags: true,
        ..Default::default()
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET .../tags/{tag}`: 204 if the floating IP has it, else 404.
pub async fn check(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    if has(&api, &caller, &id, &tag).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(tag_not_found(&id, &tag))
    }
}

/// `PUT .../tags/{tag}`: adds it (having it already is no error).
pub async fn add(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    update(&api, &caller, &id, vec![tag], |tags| IpChange {
        add_tags: tags,
        ..Default::default()
    })
    .await?;
    Ok(StatusCode::CREATED)
}

/// `DELETE .../tags/{tag}`: removes it; 404 if the floating IP does not have it.
pub async fn remove(
    State(api): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    if !has(&api, &caller, &id, &tag).await? {
        return Err(tag_not_found(&id, &tag));
    }
    update(&api, &caller, &id, vec![tag], |tags| IpChange {
        remove_tags: tags,
        ..Default::default()
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
