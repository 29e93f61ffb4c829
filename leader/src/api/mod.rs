//! The HTTP surface: router, the per-request context (who, what, from where), and
//! the helpers every handler shares (bodies, collections, answers, audit).
//!
//! One middleware does, in order: read the body (bounded), authenticate, rate
//! limit, catch up for a linearizable read if asked, run the handler, and record a
//! refused write in the audit trail. Accepted writes record their audit event in
//! the same Raft command as the change itself, so neither exists without the other.

mod apps;
mod audit;
mod dr;
mod generate;
mod map;
mod objects;
mod policy;
mod rules;
mod spec;
mod system;
mod traffic;
mod users;
mod vens;

pub use sc_store::audit::AuditEvent;
pub use spec::document as openapi;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::{authenticate, RateLimiter};
use crate::error::{ApiError, MAX_BODY_BYTES};
use crate::jobs::Jobs;
use crate::rbac::Principal;
use sc_store::db::{Db, Txn};
use sc_store::time::now_ms;

/// Everything a handler may need, shared by all requests of one node.
pub struct AppState {
    /// The store.
    pub db: Db,
    /// Per-key request budget.
    pub limiter: RateLimiter,
    /// Async collection jobs of this node.
    pub jobs: Jobs,
    /// Explorer jobs of this node.
    pub traffic: traffic::TrafficJobs,
    /// Console sessions made at this node.
    pub sessions: crate::session::Sessions,
    /// Audit events without a write of their own (refusals, sign-ins), on
    /// their way to the trail in batches.
    pub audit_queue: crate::audit_queue::AuditQueue,
    /// Failed sign-ins by client address.
    pub failed_logins: crate::failed_logins::FailedLogins,
}

/// Shared state handle.
pub type Shared = Arc<AppState>;

/// The request context the middleware hands to handlers.
#[derive(Clone)]
pub struct Ctx {
    /// The caller.
    pub who: Principal,
    /// HTTP method.
    pub method: Method,
    /// Request path.
    pub path: String,
    /// Caller address.
    pub src: String,
    /// `{resource}.{create|update|delete}`.
    pub event_type: String,
    /// The request time, chosen once (it travels in the command).
    pub now: u64,
    /// The caller asked for an async collection job (`Prefer: respond-async`).
    pub respond_async: bool,
    /// Query parameters.
    pub query: HashMap<String, String>,
    /// The body (empty for GET).
    pub body: Bytes,
}

impl Ctx {
    /// Parses the body strictly into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "this request needs a JSON body",
            ));
        }
        ApiError::parse(&self.body)
    }

    /// The body as a JSON object (for partial updates).
    pub fn object(&self) -> Result<serde_json::Map<String, Value>, ApiError> {
        match self.parse::<Value>()? {
            Value::Object(m) => Ok(m),
            _ => Err(ApiError::invalid(
                "wrong_type",
                "the body must be a JSON object",
            )),
        }
    }

    /// Refuses query parameters other than `allowed`.
    pub fn allow_query(&self, allowed: &[&str]) -> Result<(), ApiError> {
        for k in self.query.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::query(format!(
                    "unknown query parameter {k:?}; this endpoint takes: {}",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )));
            }
        }
        Ok(())
    }

    /// Adds this request's success event to `txn`.
    pub fn audit(&self, txn: &mut Txn, state: &AppState, resource: &str) -> Result<(), ApiError> {
        let ev = audit::event_of(self, state, resource, "success", 200, vec![]);
        Ok(ev.add_to(txn)?)
    }
}

/// A JSON answer stamped with the store revision it reflects.
pub fn answer(status: StatusCode, value: &Value, revision: u64) -> Response {
    let mut resp = (status, value.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("x-revision", HeaderValue::from(revision));
    resp
}

/// A typed answer stamped with the revision: the type is what the OpenAPI
/// document describes, so the bytes and the schema come from one definition.
pub fn answer_of<T: serde::Serialize>(
    status: StatusCode,
    value: &T,
    revision: u64,
) -> Result<Response, ApiError> {
    let value = serde_json::to_value(value).map_err(ApiError::internal)?;
    Ok(answer(status, &value, revision))
}

/// Typed items as the JSON values a [`collection`] filters and caps.
pub fn values<T: serde::Serialize>(
    items: impl IntoIterator<Item = T>,
) -> Result<Vec<Value>, ApiError> {
    items
        .into_iter()
        .map(|i| serde_json::to_value(i).map_err(ApiError::internal))
        .collect()
}

/// 204 stamped with the revision.
pub fn no_content(revision: u64) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert("x-revision", HeaderValue::from(revision));
    resp
}

/// The cap on a synchronous collection read (Illumio's default).
pub const MAX_SYNC_RESULTS: usize = 500;
/// The cap on an async collection job.
pub const MAX_ASYNC_RESULTS: usize = 200_000;

/// Answers a collection: capped by `max_results` (and [`MAX_SYNC_RESULTS`]) with
/// `X-Total-Count`, or, when asked, as an async job.
pub fn collection(
    ctx: &Ctx,
    state: &AppState,
    items: Vec<Value>,
    revision: u64,
) -> Result<Response, ApiError> {
    let total = items.len();
    if ctx.respond_async {
        let items: Vec<Value> = items.into_iter().take(MAX_ASYNC_RESULTS).collect();
        let job = state
            .jobs
            .finish(&ctx.who.user_id, &ctx.path, Value::Array(items));
        let mut resp = StatusCode::ACCEPTED.into_response();
        let h = resp.headers_mut();
        h.insert(
            header::LOCATION,
            HeaderValue::from_str(&job).map_err(ApiError::internal)?,
        );
        h.insert(header::RETRY_AFTER, HeaderValue::from(1));
        h.insert("x-revision", HeaderValue::from(revision));
        return Ok(resp);
    }
    let cap = match ctx.query.get("max_results") {
        None => MAX_SYNC_RESULTS,
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| {
                ApiError::query(format!("max_results: {s:?} is not a non-negative integer"))
            })?
            .min(MAX_SYNC_RESULTS),
    };
    let items: Vec<Value> = items.into_iter().take(cap).collect();
    let mut resp = answer(StatusCode::OK, &Value::Array(items), revision);
    resp.headers_mut()
        .insert("x-total-count", HeaderValue::from(total));
    Ok(resp)
}

/// Illumio-style event type from the matched route and the method.
fn event_type(route: &str, method: &Method) -> String {
    let resource = route
        .split('/')
        .rfind(|s| {
            !s.is_empty()
                && !s.starts_with('{')
                && !matches!(*s, "api" | "v2" | "orgs" | "draft" | "active")
        })
        .unwrap_or("request");
    let verb = match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "read",
    };
    format!("{resource}.{verb}")
}

/// Paths served without credentials: probes and the spec.
fn public(path: &str) -> bool {
    matches!(
        path,
        "/api/v2/health" | "/api/v2/supercluster/leader" | "/api/v2/openapi.json"
    )
}

async fn middleware(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let console = crate::session::from_console(req.headers());
    let r = match guard(state, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if console {
        crate::session::no_prompt(r)
    } else {
        r
    }
}

async fn guard(state: Shared, req: Request, next: Next) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    if public(&path) {
        return Ok(next.run(req).await);
    }
    if let Some(left) = state.db.node().fence().serving_blocked() {
        // A fenced node serves nothing but the runbook (which lifts the fence).
        if !path.starts_with("/api/v2/supercluster/") {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "fenced",
                format!(
                    "this region is fenced for a failover drill for another {} s; use another region",
                    left.as_secs() + 1
                ),
            );
            e.retry_after = Some(left.as_secs() + 1);
            return Err(e);
        }
    }
    // Who asks comes first: nothing of the body is read for a caller without
    // credentials (a body is memory an anonymous client could fill).
    let (mut parts, body) = req.into_parts();
    let auth = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let cookie = crate::session::token_of(
        parts
            .headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok()),
    );
    let src_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let who = match (auth, cookie) {
        (None, Some(token)) => console_caller(&state, &parts.method, &parts.headers, token).await,
        _ => sign_in(&state, src_ip, &parts.method, &path, auth).await,
    }
    .inspect_err(|_| {
        tracing::debug!(%path, "refused unauthenticated request");
    })?;
    let limit = body_limit(&path, &who)?;
    if let Some(declared) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        // Far past the limit: refused before a byte of it is read. Slightly
        // past: read_body drains it, so the client gets the answer, not a reset.
        if declared > limit.saturating_add(DRAIN_MARGIN) as u64 {
            return Err(too_large(declared, limit));
        }
    }
    let body = read_body(body, limit).await?;
    if let Err(secs) = state.limiter.check(&who.user_id) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many requests for user {}; retry in {secs} s",
                who.username
            ),
        );
        e.retry_after = Some(secs);
        return Err(e);
    }
    let query: HashMap<String, String> = match parts.uri.query() {
        None => HashMap::new(),
        Some(q) => serde_urlencoded_pairs(q)?,
    };
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let src = src_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let method = parts.method.clone();
    linearize_if_asked(&state, &parts.headers).await?;
    let ctx = Ctx {
        who,
        method: method.clone(),
        path: path.clone(),
        src,
        event_type: event_type(&route, &method),
        now: now_ms(),
        respond_async: method == Method::GET
            && parts
                .headers
                .get("prefer")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("respond-async")),
        query,
        body,
    };
    parts.extensions.insert(ctx.clone());
    let resp = next.run(Request::from_parts(parts, Body::empty())).await;
    // Explorer queries are POSTs that change nothing: not writes to audit.
    let writes = matches!(method, Method::POST | Method::PUT | Method::DELETE)
        && !path.contains("/traffic_flows/");
    let status = resp.status();
    if writes && status.as_u16() >= 400 && status != StatusCode::SERVICE_UNAVAILABLE {
        return Ok(audit::record_refusal(&state, &ctx, resp).await);
    }
    if status.is_success() && audit::is_dr_action(&method, &path) {
        audit::record_dr_action(&state, &ctx, status.as_u16());
    }
    Ok(resp)
}

/// The caller behind a console session cookie. Writes must carry the
/// session's CSRF token: a cookie alone proves only that a browser holds it.
async fn console_caller(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    token: &str,
) -> Result<crate::rbac::Principal, ApiError> {
    let s = state
        .sessions
        .get(token)
        .ok_or_else(|| ApiError::unauthorized("your console session ended; sign in again"))?;
    if !matches!(*method, Method::GET | Method::HEAD) {
        let sent = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !crate::auth::same_secret(sent, &s.csrf) {
            return Err(ApiError::forbidden(
                "a console write needs the session's X-CSRF-Token header",
            ));
        }
    }
    crate::auth::principal_for_key(&state.db, &s.key).await
}

/// Checks API key credentials, for the API and the console's sign-in: an
/// address past its failure budget is refused before anything is looked up
/// (429); each failure is counted and audited (in a batch, see
/// [`crate::audit_queue`]), and so is the moment an address is cut off.
pub async fn sign_in(
    state: &AppState,
    src: Option<std::net::IpAddr>,
    method: &Method,
    path: &str,
    header: Option<&str>,
) -> Result<crate::rbac::Principal, ApiError> {
    if let Some(ip) = src {
        if let Err(secs) = state.failed_logins.check(ip) {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!(
                    "too many failed sign-ins from {ip}; retry in {secs} s with a valid API key"
                ),
            );
            e.retry_after = Some(secs);
            return Err(e);
        }
    }
    let err = match authenticate(&state.db, header).await {
        Ok(who) => return Ok(who),
        Err(e) => e,
    };
    // Only credentials that were wrong count; a store that could not answer
    // (no leader) is not the caller's failure.
    if err.status != StatusCode::UNAUTHORIZED {
        return Err(err);
    }
    let failures = src.map_or(0, |ip| state.failed_logins.failed(ip));
    let info = state.db.node().info();
    let mut ev = sc_store::audit::AuditEvent {
        time_ms: now_ms(),
        event_type: "user.authenticate".into(),
        status: "failure".into(),
        actor: String::new(),
        username: crate::auth::basic_username(header).unwrap_or_default(),
        api_method: method.to_string(),
        api_endpoint: path.to_string(),
        http_status: 401,
        src_ip: src.map(|ip| ip.to_string()).unwrap_or_default(),
        node: info.name.clone(),
        region: info.region.clone(),
        resource: String::new(),
        errors: err
            .errors
            .iter()
            .map(|e| (e.token.clone(), e.message.clone()))
            .collect(),
    };
    state.audit_queue.push(ev.clone());
    if failures == crate::failed_logins::MAX_FAILURES {
        tracing::warn!(src = %ev.src_ip, "too many failed sign-ins: refusing this address for a minute");
        ev.errors = vec![(
            "too_many_failures".into(),
            format!(
                "{failures} failed sign-ins in {} s: further attempts are refused for the rest of the minute",
                crate::failed_logins::WINDOW.as_secs()
            ),
        )];
        state.audit_queue.push(ev);
    }
    Err(err)
}

/// The largest body `who` may send to `path`: a backup only to the runbook's
/// restore, and only for a caller who may operate the cluster; 1 MiB elsewhere.
fn body_limit(path: &str, who: &crate::rbac::Principal) -> Result<usize, ApiError> {
    if path != "/api/v2/supercluster/restore" {
        return Ok(MAX_BODY_BYTES);
    }
    if who.may(crate::rbac::Action::OperateCluster) {
        Ok(dr::MAX_BACKUP_BYTES)
    } else {
        Err(ApiError::forbidden(
            "restoring a backup needs the owner role (the DR runbook)",
        ))
    }
}

fn too_large(seen: u64, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!("the body has {seen} bytes or more; the limit is {limit} bytes"),
    )
}

/// How much of an oversized body is read (and dropped) so that an HTTP/1.1
/// client still sending it gets the 413 rather than a reset; past it, the
/// connection is given up.
const DRAIN_MARGIN: usize = 8 * 1024 * 1024;

/// Reads a body of at most `limit` bytes. Up to [`DRAIN_MARGIN`] past the limit is read
/// (and dropped) before answering 413, so an HTTP/1.1 client still sending a
/// slightly oversized body gets the answer rather than a reset; past that the
/// connection is given up.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_request",
                format!("reading the body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                buf.extend_from_slice(&data);
            } else if seen > limit.saturating_add(DRAIN_MARGIN) {
                break;
            }
        }
    }
    if seen > limit {
        return Err(too_large(seen as u64, limit));
    }
    Ok(Bytes::from(buf))
}

async fn linearize_if_asked(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("x-consistency").map(|v| v.to_str()) {
        None => Ok(()),
        Some(Ok("linearizable")) => state.db.linearize().await.map_err(ApiError::from),
        Some(Ok("local")) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            "X-Consistency must be \"linearizable\" or \"local\"",
        )),
    }
}

fn serde_urlencoded_pairs(q: &str) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k)?;
        let v = percent_decode(v)?;
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::query(format!(
                "query parameter {k:?} given twice"
            )));
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::query(format!("bad percent-encoding in {s:?}")))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::query(format!("{s:?} is not UTF-8")))
}

async fn fallback() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_endpoint",
        "no endpoint at this path and method; see /api/v2/openapi.json",
    )
}

/// A path that is served, with a method it does not take: 405 in the API's
/// error format (axum adds the `Allow` header listing the methods it takes),
/// so a client can tell a wrong method from a wrong path.
async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {method}; the Allow header lists the methods it does (see /api/v2/openapi.json)",
            uri.path()
        ),
    )
}

/// Every endpoint with its documentation, the one place both the router and
/// the OpenAPI document come from.
fn api() -> spec::Api {
    system::api()
        .merge(dr::api())
        .merge(apps::api())
        .merge(objects::api())
        .merge(rules::api())
        .merge(policy::api())
        .merge(users::api())
        .merge(audit::api())
        .merge(traffic::api())
        .merge(map::api())
        .merge(generate::api())
        .merge(vens::api())
}

/// Every served route, before the middleware and the state: what tests hold
/// against the OpenAPI document.
pub fn routes() -> Router<Shared> {
    api().split().0
}

/// The whole API as one router.
pub fn router(state: Shared) -> Router {
    let api = routes()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware,
        ))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(fallback);
    api.with_state(state)
}

/// Extracts the request context the middleware stored.
pub type CtxExt = axum::extract::Extension<Ctx>;
