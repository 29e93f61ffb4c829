//! Every endpoint registered once: its handler and what the OpenAPI document
//! says of it, so the router and the document cannot drift apart.
//!
//! utoipa's `#[utoipa::path]` and `routes!` make one non-generic item per
//! function and cannot take our generic handlers (`list::<D>`), so this small
//! builder does what they would: it hands utoipa-axum's `OpenApiRouter` the
//! axum method router, the path item and the schemas of one endpoint together
//! (decision 0012). Schemas come from the request and answer types
//! (`#[derive(ToSchema)]`); a test validates recorded answers against them.

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter};
use axum::Router;
use serde_json::{json, Value};
use utoipa::openapi::path::{HttpMethod, Operation, PathItem};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{OpenApi, Paths, RefOr};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use super::Shared;

/// Named schemas an endpoint brings into `components.schemas`.
pub type Schemas = Vec<(String, RefOr<Schema>)>;

/// Registers a schema (and those it refers to) and returns a reference to it.
pub type SchemaFn = fn(&mut Schemas) -> Value;

/// What a request carries or an answer holds.
#[derive(Clone, Copy)]
pub enum Body {
    /// Nothing (a 204, or a POST that is a command without parameters).
    Empty,
    /// One JSON value of a schema.
    One(SchemaFn),
    /// A JSON array of a schema (a collection: capped, with `X-Total-Count`).
    List(SchemaFn),
    /// Raw bytes (a backup).
    Binary,
}

/// One `T`.
pub const fn one<T: ToSchema>() -> Body {
    Body::One(refer::<T>)
}

/// An array of `T`.
pub const fn many<T: ToSchema>() -> Body {
    Body::List(refer::<T>)
}

/// Registers `T` and what it refers to; a `$ref` to it.
pub fn refer<T: ToSchema>(out: &mut Schemas) -> Value {
    let name = T::name().into_owned();
    out.push((name.clone(), T::schema()));
    T::schemas(out);
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Registers a schema given as JSON (one composed from derived ones) under
/// `name`; a `$ref` to it.
pub fn register(out: &mut Schemas, name: &str, schema: Value) -> Value {
    // The JSON was made from utoipa's own schemas plus plain properties, so it
    // reads back; a failure is a bug in this crate, caught by every test.
    let schema: RefOr<Schema> =
        serde_json::from_value(schema).expect("a composed schema is a valid schema");
    out.push((name.to_string(), schema));
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// What the document says of one endpoint.
#[derive(Clone)]
pub struct Op {
    summary: Cow<'static, str>,
    body: Body,
    status: u16,
    answer: Body,
    query: &'static [&'static str],
    public: bool,
}

impl Op {
    /// An endpoint that takes no body and answers 204 until told otherwise.
    pub const fn new(summary: &'static str) -> Op {
        Op {
            summary: Cow::Borrowed(summary),
            body: Body::Empty,
            status: 204,
            answer: Body::Empty,
            query: &[],
            public: false,
        }
    }

    /// A summary made at start-up (the generic endpoints name their kind).
    pub fn described(summary: String) -> Op {
        Op {
            summary: Cow::Owned(summary),
            ..Op::new("")
        }
    }

    /// The request body.
    pub const fn body(mut self, body: Body) -> Op {
        self.body = body;
        self
    }

    /// The success status and what it holds.
    pub const fn answer(mut self, status: u16, answer: Body) -> Op {
        self.status = status;
        self.answer = answer;
        self
    }

    /// The query parameters it accepts (the handler refuses others).
    pub const fn query(mut self, query: &'static [&'static str]) -> Op {
        self.query = query;
        self
    }

    /// Served without credentials (probes and the document itself).
    pub const fn public(mut self) -> Op {
        self.public = true;
        self
    }

    /// The query parameters, for the handler's `allow_query`.
    pub fn accepts(&self) -> &'static [&'static str] {
        self.query
    }

    fn content(body: Body, out: &mut Schemas) -> Option<Value> {
        match body {
            Body::Empty => None,
            Body::One(f) => Some(json!({"application/json": {"schema": f(out)}})),
            Body::List(f) => {
                Some(json!({"application/json": {"schema": {"type": "array", "items": f(out)}}}))
            }
            Body::Binary => Some(
                json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}),
            ),
        }
    }

    /// The operation object, registering its schemas in `out`.
    fn operation(&self, path: &str, out: &mut Schemas) -> Operation {
        let mut params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(
            self.query
                .iter()
                .map(|name| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}})),
        );
        let entry = refer::<crate::error::ErrorEntry>(out);
        let errors = json!({"application/json": {"schema": {"type": "array", "items": entry}}});
        let mut ok = json!({"description": match self.answer {
            Body::List(_) => "Success; `X-Total-Count` gives the number of matches before the cap (`max_results`, at most 500), `X-Revision` the store revision the answer reflects. With `Prefer: respond-async`, 202 and a job in `Location`.",
            _ => "Success; `X-Revision` gives the store revision the answer reflects.",
        }});
        if let Some(c) = Self::content(self.answer, out) {
            ok["content"] = c;
        }
        let mut responses = serde_json::Map::new();
        responses.insert(self.status.to_string(), ok);
        responses.insert(
            "4XX".into(),
            json!({"description": "Refused; nothing changed.", "content": errors}),
        );
        responses.insert(
            "503".into(),
            json!({"description": "No leader reachable; see Retry-After.", "content": errors}),
        );
        let mut op = json!({
            "summary": self.summary,
            "parameters": params,
            "responses": responses,
        });
        if let Some(c) = Self::content(self.body, out) {
            op["requestBody"] = json!({"required": true, "content": c});
        }
        if !self.public {
            op["security"] = json!([{"apiKey": []}]);
        }
        serde_json::from_value(op).expect("the operation JSON is an OpenAPI operation")
    }
}

fn http_method(m: &Method) -> (HttpMethod, MethodFilter) {
    match *m {
        Method::POST => (HttpMethod::Post, MethodFilter::POST),
        Method::PUT => (HttpMethod::Put, MethodFilter::PUT),
        Method::DELETE => (HttpMethod::Delete, MethodFilter::DELETE),
        // The API uses only these four.
        _ => (HttpMethod::Get, MethodFilter::GET),
    }
}

/// The routes of the API and their document, built together.
pub struct Api(OpenApiRouter<Shared>);

impl Default for Api {
    fn default() -> Self {
        Api(OpenApiRouter::new())
    }
}

impl Api {
    /// Serves `handler` at `method path`, documented as `op`.
    pub fn at<H, T>(self, method: Method, path: &str, op: Op, handler: H) -> Api
    where
        H: Handler<T, Shared>,
        T: 'static,
    {
        let (doc_method, filter) = http_method(&method);
        let mut schemas = Schemas::new();
        let item = PathItem::new(doc_method, op.operation(path, &mut schemas));
        let paths = Paths::builder().path(path, item).build();
        Api(self.0.routes((schemas, paths, on(filter, handler))))
    }

    /// Adds another module's routes.
    pub fn merge(self, other: Api) -> Api {
        Api(self.0.merge(other.0))
    }

    /// The router and the document.
    pub fn split(self) -> (Router<Shared>, OpenApi) {
        self.0.split_for_parts()
    }
}

/// The OpenAPI document as served and committed (`docs/openapi.json`).
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, api) = super::api().split();
        let mut doc = serde_json::to_value(&api).unwrap_or_default();
        doc["info"] = json!({"title": "Supercluster PCE admin API", "version": "2"});
        doc["components"]["securitySchemes"] =
            json!({"apiKey": {"type": "http", "scheme": "basic"}});
        doc
    })
}
