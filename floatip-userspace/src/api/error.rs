//! Neutron's error body, `{"NeutronError": {"type", "message", "detail"}}`, with its status.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::error::{ErrorKind, kind_of};

/// An API error: status, Neutron exception type and one-line message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "HTTPBadRequest", message)
    }

    pub fn not_found(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "PolicyNotAuthorized", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "HTTPUnauthorized", message)
    }

    /// A control-layer error; `not_found` is the Neutron type of a 404 for this resource.
    pub fn from_control(err: &anyhow::Error, not_found: &'static str) -> Self {
        let message = format!("{err:#}");
        let (status, kind) = match kind_of(err) {
            ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "InvalidInput"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, not_found),
            ErrorKind::Conflict if message.contains("quota") => (StatusCode::CONFLICT, "OverQuota"),
            ErrorKind::Conflict if message.contains("no more floating IPs") => {
                (StatusCode::CONFLICT, "ExternalIpAddressExhausted")
            }
            ErrorKind::Conflict => (StatusCode::CONFLICT, "Conflict"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            ErrorKind::System => {
                eprintln!("floatip agent: internal error: {message}");
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError")
            }
        };
        Self::new(status, kind, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"NeutronError": {"type": self.kind, "message": self.message, "detail": ""}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"floatip\""),
            );
        }
        response
    }
}
