//! The management console on the admin API's port: its page and files
//! (embedded by `sc-console`), and the session endpoints that turn an API
//! key into a cookie (see [`crate::session`]). Everything the console shows
//! comes from the admin API itself, under the same RBAC.
//!
//! These routes are not the REST API (no OpenAPI entry, no audit of reads):
//! `GET /`, `GET /console/{*file}`, and `POST|GET|DELETE /console/session`.

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use crate::api::{answer, Shared};
use crate::auth::{principal_for_key, same_secret};
use crate::error::ApiError;
use crate::session::{cookie, no_prompt, token_of};

/// The page may load only its own files and talk only to its own origin,
/// and no other site may frame it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The largest sign-in body read.
const MAX_SIGN_IN: usize = 4096;

/// The console's routes (merged into the API router, outside its middleware).
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(index))
        .route("/console/{*file}", get(file))
        .route(
            "/console/session",
            get(|s, h| async { unprompted(whoami(s, h).await) })
                .post(|s, p, b| async move { unprompted(sign_in(s, p, b).await) })
                .delete(|s, h| async { unprompted(sign_out(s, h).await) }),
        )
}

fn unprompted(r: Result<Response, ApiError>) -> Response {
    no_prompt(r.unwrap_or_else(IntoResponse::into_response))
}

fn served(asset: &'static sc_console::Asset) -> Response {
    let mut r = (StatusCode::OK, asset.body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn index() -> Response {
    served(sc_console::index())
}

async fn file(Path(name): Path<String>) -> Response {
    match sc_console::asset(&name) {
        Some(a) if name != "index.html" => served(a),
        _ => ApiError::not_found(format!("/console/{name}")).into_response(),
    }
}

/// A key to sign in with.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    auth_username: String,
    secret: String,
}

fn with_cookie(mut r: Response, token: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&cookie(token)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn sign_in(
    State(s): State<Shared>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let src = peer.map(|p| p.0 .0.ip());
    if body.len() > MAX_SIGN_IN {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("a sign-in body is at most {MAX_SIGN_IN} bytes"),
        ));
    }
    let key: SignIn = ApiError::parse(&body)?;
    // Guessing is slowed per key name, as API calls are.
    if let Err(secs) = s.limiter.check(&key.auth_username) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many sign-ins for this key; retry in {secs} s"),
        );
        e.retry_after = Some(secs);
        return Err(e);
    }
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", key.auth_username, key.secret));
    let path = "/console/session";
    let who = crate::api::sign_in(
        &s,
        src,
        &Method::POST,
        path,
        Some(&format!("Basic {basic}")),
    )
    .await?;
    let (token, session) = s.sessions.create(&key.auth_username).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            "this region holds too many console sessions; try another region or later",
        )
    })?;
    tracing::info!(user = %who.username, "console sign-in");
    // A session is a credential handed out: it goes into the audit trail.
    let info = s.db.node().info();
    s.audit_queue.push(sc_store::audit::AuditEvent {
        time_ms: sc_store::time::now_ms(),
        event_type: "user.sign_in".into(),
        status: "success".into(),
        actor: who.href(),
        username: who.username.clone(),
        api_method: "POST".into(),
        api_endpoint: path.into(),
        http_status: 200,
        src_ip: src.map(|ip| ip.to_string()).unwrap_or_default(),
        node: info.name.clone(),
        region: info.region.clone(),
        resource: String::new(),
        errors: vec![],
    });
    let body = json!({"username": who.username, "csrf_token": session.csrf});
    Ok(with_cookie(answer(StatusCode::OK, &body, 0), &token))
}

async fn whoami(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    let none = || ApiError::unauthorized("not signed in to this region's console");
    let token =
        token_of(headers.get(header::COOKIE).and_then(|v| v.to_str().ok())).ok_or_else(none)?;
    let session = s.sessions.get(token).ok_or_else(none)?;
    let who = principal_for_key(&s.db, &session.key).await?;
    let body = json!({"username": who.username, "csrf_token": session.csrf});
    let mut r = answer(StatusCode::OK, &body, 0);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

async fn sign_out(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = token_of(headers.get(header::COOKIE).and_then(|v| v.to_str().ok()))
        .ok_or_else(|| ApiError::unauthorized("not signed in to this region's console"))?;
    if let Some(session) = s.sessions.get(token) {
        let sent = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !same_secret(sent, &session.csrf) {
            return Err(ApiError::forbidden(
                "signing out needs the session's X-CSRF-Token header",
            ));
        }
        s.sessions.remove(token);
    }
    Ok(with_cookie(StatusCode::NO_CONTENT.into_response(), ""))
}
