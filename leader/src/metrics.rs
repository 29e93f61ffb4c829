//! What the admin API tells Prometheus: requests by route, method and status,
//! and how long they took.
//!
//! The route is axum's matched path template (`/api/v2/orgs/{org}/labels`),
//! never the raw path: object ids in paths would make one series per object.
//! A request that matched no route counts under `unmatched`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// One request's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    /// The HTTP status code.
    status: u16,
}

/// The latency histogram's labels: no status, so that a dashboard's quantile
/// per route needs no sum over codes (and series stay few).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

/// The API's instruments; cheap to clone (every clone counts into the same series).
#[derive(Clone)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            // 0.5 ms to about 16 s, doubling: a replica read takes under a
            // millisecond, a write a few, a provision of a large draft seconds.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
            }),
        }
    }
}

impl ApiMetrics {
    /// Registers the API's series into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pce_api_requests",
            "Admin API requests answered, by route template, method and status",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "pce_api_request_duration",
            "Time from a request's arrival to its response headers, by route template and method",
            Unit::Seconds,
            self.duration.clone(),
        );
    }
}

/// The middleware: wraps every route, the console's and the fallback's.
pub(crate) async fn track(State(m): State<ApiMetrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // Only the standard methods get their own series: a client inventing
    // methods must not be able to grow the exposition.
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "other",
    }
    .to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let elapsed = started.elapsed().as_secs_f64();
    m.requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: method.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    m.duration
        .get_or_create(&RouteLabels { route, method })
        .observe(elapsed);
    response
}
