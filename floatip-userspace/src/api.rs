//! The HTTP API of `floatip agent`: the floating-IP part of Neutron's v2.0 API, plus
//! `/metrics`. It parses requests and presents results only: every operation is a call into
//! `control`, the layer the CLI uses, run on the agent's control thread.

mod auth;
mod error;
mod floatingips;
mod gateways;
mod identity;
mod ids;
mod metrics;
mod networks;
mod ports;
mod query;
mod quotas;
mod tags;
mod versions;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Instant};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use self::error::ApiError;
use self::{auth::Auth, error::ApiResult, metrics::Metrics};
use crate::{
    agent::{Config, Worker},
    control::{self, Control},
};

tokio::task_local! {
    /// When the request being served arrived (set by [`observe`] around the handler).
    static ARRIVED: Instant;
}

/// What every handler shares.
pub struct Api {
    worker: Worker,
    auth: Auth,
    max_body: usize,
    metrics: Metrics,
    /// Where the pinned maps are: `/metrics` reads the pairs' counters with a handle of its own.
    bpffs: PathBuf,
    /// Served over TLS (for the links in version documents).
    tls: bool,
}

pub type Shared = Arc<Api>;

impl Api {
    pub fn new(worker: Worker, config: &Config) -> Self {
        Self {
            worker,
            auth: Auth::new(config.max_failures, config.lockout_seconds),
            max_body: config.max_body_bytes,
            metrics: Metrics::new(),
            bpffs: config.bpffs.clone(),
            tls: config.tls.is_some(),
        }
    }

    /// Runs `f` on the control thread; a failure becomes the matching Neutron error, with
    /// `not_found` as the type of a 404.
    async fn control<T: Send + 'static>(
        &self,
        not_found: &'static str,
        f: impl FnOnce(&mut Control) -> anyhow::Result<T> + Send + 'static,
    ) -> ApiResult<T> {
        let started = Instant::now();
        let arrived = ARRIVED.try_with(|t| *t).unwrap_or(started);
        let result = self
            .worker
            .run(move |c| {
                // Whatever an earlier job left (a change rolled back) is not this request's.
                control::take_maps_written();
                let v = f(c)?;
                Ok((v, control::take_maps_written()))
            })
            .await;
        self.metrics
            .control_seconds
            .observe(started.elapsed().as_secs_f64());
        let (v, written) = result.map_err(|e| ApiError::from_control(&e, not_found))?;
        if let Some(at) = written {
            self.metrics
                .write_to_maps_seconds
                .observe(at.saturating_duration_since(arrived).as_secs_f64());
        }
        Ok(v)
    }

    /// Reads a JSON body `{resource: {...}}` of at most `max_body` bytes and decodes the inner
    /// object; unknown fields and wrong types are 400s, a bigger body a 413.
    async fn body<T: DeserializeOwned>(&self, body: Body, resource: &str) -> ApiResult<T> {
        let bytes = axum::body::to_bytes(body, self.max_body)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "HTTPRequestEntityTooLarge",
                    format!("request body larger than {} bytes", self.max_body),
                )
            })?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON in request body: {e}")))?;
        let Value::Object(mut outer) = value else {
            return Err(ApiError::bad_request(format!(
                "expected an object {{\"{resource}\": {{...}}}}"
            )));
        };
        let inner = outer.remove(resource).ok_or_else(|| {
            ApiError::bad_request(format!("resource '{resource}' not found in request body"))
        })?;
        if let Some(extra) = outer.keys().next() {
            return Err(ApiError::bad_request(format!(
                "unrecognized attribute '{extra}' in request body"
            )));
        }
        serde_json::from_value(inner)
            .map_err(|e| ApiError::bad_request(format!("invalid {resource}: {e}")))
    }
}

/// The API routes, and `/metrics` unless it has its own listener.
pub fn router(api: Shared, with_metrics: bool) -> Router {
    let authenticated = Router::new()
        .merge(versions::routes())
        .merge(networks::routes())
        .merge(ports::routes())
        .merge(floatingips::routes())
        .merge(quotas::routes())
        .merge(gateways::routes())
        .merge(identity::routes())
        .route_layer(middleware::from_fn_with_state(api.clone(), authenticate));
    let mut app = Router::new()
        .route("/", get(versions::root))
        .merge(authenticated);
    if with_metrics {
        app = app.route("/metrics", get(metrics::scrape));
    }
    app.fallback(|| async {
        ApiError::not_found("HTTPNotFound", "the resource could not be found")
    })
    .method_not_allowed_fallback(|| async {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "HTTPMethodNotAllowed",
            "method not allowed on this resource",
        )
    })
    .layer(middleware::from_fn_with_state(api.clone(), observe))
    .with_state(api)
}

/// `/metrics` alone, for its own listener.
pub fn metrics_router(api: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics::scrape))
        .with_state(api)
}

/// Authenticates the request and hands the [`auth::Caller`] to the handler.
async fn authenticate(
    State(api): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    match api
        .auth
        .authenticate(&api.worker, header.as_deref(), peer.ip())
        .await
    {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// Counts requests and their latency by route, method and status.
async fn observe(State(api): State<Shared>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = ARRIVED.scope(started, next.run(request)).await;
    api.metrics.record_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
