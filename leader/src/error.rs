//! The API's error type: every 4xx/5xx answer is a JSON array of
//! `{"token", "message"}`, as Illumio's PCE answers, so scripts written against it
//! can branch on the token and show the message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sc_policy::validate::ValidationError;
use serde::{Deserialize, Serialize};

/// One entry of an error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorEntry {
    /// Stable, machine-readable name of the problem.
    pub token: String,
    /// What is wrong, naming the field, and what would be right.
    pub message: String,
}

/// An HTTP error answer. Handlers return it; nothing was changed when one is returned
/// (writes are one Raft command, applied whole or not at all).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The body entries (at least one).
    pub errors: Vec<ErrorEntry>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

/// The largest request body accepted, in bytes: generous for a bulk of 1,000
/// workloads, small enough that one client cannot make a node buffer much.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

impl ApiError {
    /// One error with one token.
    pub fn new(status: StatusCode, token: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            errors: vec![ErrorEntry {
                token: token.to_string(),
                message: message.into(),
            }],
            retry_after: None,
        }
    }

    /// 406 with Illumio's `input_validation_error`-style token of our own choosing.
    pub fn invalid(token: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, token, message)
    }

    /// A field that fails a rule of the API layer (shape, range).
    pub fn field(field: &str, message: impl std::fmt::Display) -> Self {
        Self::invalid("invalid_value", format!("{field}: {message}"))
    }

    /// A reference to an object that does not exist (or is of the wrong kind).
    pub fn reference(field: &str, message: impl std::fmt::Display) -> Self {
        Self::invalid("invalid_reference", format!("{field}: {message}"))
    }

    /// 404 for an object.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} does not exist"),
        )
    }

    /// 403: authenticated, but the roles do not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 401: no or wrong credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_required", message)
    }

    /// 409: the object changed under us too often, or a name is taken.
    pub fn conflict(token: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, token, message)
    }

    /// 503 with `Retry-After`: no leader reachable right now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message);
        e.retry_after = Some(1);
        e
    }

    /// 500: a fault of ours (storage, encoding), never the caller's.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            message.to_string(),
        )
    }

    /// 400 for a query parameter.
    pub fn query(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query_parameter", message)
    }

    /// 406 for the policy engine's validation errors, one entry each.
    pub fn validation(errors: &[ValidationError]) -> Self {
        ApiError {
            status: StatusCode::NOT_ACCEPTABLE,
            errors: errors
                .iter()
                .map(|e| ErrorEntry {
                    token: e.token().to_string(),
                    message: e.to_string(),
                })
                .collect(),
            retry_after: None,
        }
    }

    /// Classifies a JSON body error: malformed, unknown field, wrong type, missing
    /// field; the message starts with the path of the offending field.
    pub fn json(err: &serde_json::Error) -> Self {
        Self::json_at("", err)
    }

    fn json_at(path: &str, err: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let msg = if path.is_empty() || path == "." {
            err.to_string()
        } else {
            format!("{path}: {err}")
        };
        let inner = err.to_string();
        match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => Self::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {msg}"),
            ),
            Category::Data if inner.starts_with("unknown field") => {
                Self::invalid("unknown_field", msg)
            }
            Category::Data if inner.starts_with("missing field") => {
                Self::invalid("missing_field", msg)
            }
            Category::Data
                if inner.starts_with("invalid type") || inner.starts_with("invalid value") =>
            {
                Self::invalid("wrong_type", msg)
            }
            Category::Data => Self::invalid("invalid_value", msg),
        }
    }

    /// Parses a request body strictly, naming the offending field on failure.
    pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let v = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| Self::json_at(&e.path().to_string(), e.inner()))?;
        de.end().map_err(|e| Self::json(&e))?;
        Ok(v)
    }

    /// [`ApiError::parse`] for a JSON value (merged partial updates).
    pub fn parse_value<T: serde::de::DeserializeOwned>(
        v: serde_json::Value,
    ) -> Result<T, ApiError> {
        serde_path_to_error::deserialize(v)
            .map_err(|e| Self::json_at(&e.path().to_string(), e.inner()))
    }

    /// The first token (for audit records and tests).
    pub fn token(&self) -> &str {
        self.errors.first().map(|e| e.token.as_str()).unwrap_or("")
    }
}

impl From<sc_raft::Error> for ApiError {
    fn from(e: sc_raft::Error) -> Self {
        match e {
            sc_raft::Error::NoLeader { .. } | sc_raft::Error::Stopped(_) => {
                ApiError::unavailable(format!("no leader can take the write now: {e}"))
            }
            sc_raft::Error::InvalidCommand(c) => {
                ApiError::invalid("request_too_large", format!("the change is too large: {c}"))
            }
            sc_raft::Error::Membership(m) => ApiError::conflict(
                "membership_refused",
                format!("the membership change was refused: {m}"),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<sc_store::StoreError> for ApiError {
    fn from(e: sc_store::StoreError) -> Self {
        use sc_store::StoreError as S;
        match e {
            S::NoLeader(m) => ApiError::unavailable(m),
            S::Raft(r) => r.into(),
            S::TooLarge(reason) => ApiError::invalid(
                "request_too_large",
                format!("the change cannot be stored: {reason}"),
            ),
            S::Invalid(errors) => ApiError::validation(&errors),
            S::KeptChanging(_) => ApiError::conflict("concurrent_modification", e.to_string()),
            S::Corrupt(_) | S::Encode(_) | S::Internal(_) => ApiError::internal(e),
        }
    }
}

/// A plan refused as 404 (not found) or 406 (a reference or a value) may only
/// reflect a replica that has not yet applied an object made in another region.
impl sc_store::PlanError for ApiError {
    fn may_be_stale(&self) -> bool {
        matches!(self.status.as_u16(), 404 | 406)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.errors).unwrap_or_else(|_| b"[]".to_vec());
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"supercluster\""),
            );
        }
        resp
    }
}

/// Errors of starting the API server (not of requests).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate or key.
    #[error("TLS setup for the admin API: {0}")]
    Tls(String),
    /// Writing the bootstrap owner.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct L {
        key: String,
    }

    #[test]
    fn body_errors_are_classified_and_name_the_field() {
        let e = ApiError::parse::<L>(br#"{"key": "a", "colour": 1}"#).unwrap_err();
        assert_eq!(e.token(), "unknown_field", "{e:?}");
        let e = ApiError::parse::<L>(br#"{"key": 5}"#).unwrap_err();
        assert_eq!(e.token(), "wrong_type", "{e:?}");
        assert!(e.errors[0].message.starts_with("key: "), "{e:?}");
        let e = ApiError::parse::<L>(br#"{}"#).unwrap_err();
        assert_eq!(e.token(), "missing_field", "{e:?}");
        let e = ApiError::parse::<L>(br#"{"key": "#).unwrap_err();
        assert_eq!(e.token(), "malformed_json", "{e:?}");
    }
}
