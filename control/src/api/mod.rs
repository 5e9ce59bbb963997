//! The Kubernetes API over HTTP (axum): one handler parses the path into a
//! route and hands it to the verb's module.
//!
//! - `path`: Kubernetes' URL grammar.
//! - `discovery`: `/version`, `/api`, `/apis`, resource lists.
//! - `objects`: get, create, update, patch, delete on one object.
//! - `eviction`: `pods/<name>/eviction`, as PodDisruptionBudgets allow.
//! - `list`, `watch`: collections, paging, streams.
//! - `logs`: `pods/<name>/log`, proxied to the pod's node.
//! - `patch`, `defaults`, `validation`, `selector`, `table`: the pieces.
//! - `protobuf`: bodies in Kubernetes' protobuf encoding.
//! - `services`, `nodeports`: Services' ClusterIPs and node ports.
//! - `status`: errors as `Status` objects.
//! - `metrics`: Prometheus counters and latency histograms.
//!
//! The module registry's endpoints (`crate::registry::http`) are served by
//! the same handler, under `/flotilla/registry/v1/`.

pub mod clock;
pub mod defaults;
pub mod discovery;
pub mod eviction;
pub mod join;
pub mod list;
pub mod logs;
pub mod metrics;
pub mod namespaces;
pub mod nodeports;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod path;
pub mod protobuf;
pub mod request;
pub mod selector;
pub mod services;
pub mod status;
pub mod table;
pub mod tokens;
pub mod validation;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::Instrument;

use self::path::{Route, Target};
use self::request::{Params, REQUEST_BODY_MAX, decode_body, wants_table};
use self::status::ApiError;
use crate::audit::{self, Auditor};
use crate::auth::{Attributes, Authorizer, UserInfo};
use crate::resources::{Registry, registry};
use crate::storage::Storage;
use crate::tls::Peer;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub storage: Storage,
    pub registry: &'static Registry,
    pub metrics: Arc<metrics::Metrics>,
    /// The power to admit new servers and agents; none over plain HTTP.
    pub join: Option<Arc<crate::join::Authority>>,
    /// How this server reaches agents that serve HTTPS; none over plain
    /// HTTP, where only agents on loopback are reached.
    pub kubelet_tls: Option<tokio_rustls::TlsConnector>,
    pub modules: Arc<crate::registry::ModuleRegistry>,
    /// Where Services' ClusterIPs come from (`services.rs`).
    pub service_cidr: ipnet::Ipv4Net,
    /// Where Services' node ports come from (`nodeports.rs`).
    pub node_port_range: nodeports::NodePortRange,
    /// Decides every request (`crate::auth`).
    pub authorizer: Arc<Authorizer>,
    /// Who the request being served is from; set per request by the
    /// handler, the server itself (a superuser) outside requests.
    pub user: Arc<UserInfo>,
    /// Issues and checks ServiceAccount tokens; none: bearer tokens are
    /// refused.
    pub tokens: Option<Arc<crate::auth::tokens::Tokens>>,
    /// Records requests as its policy says (`crate::audit`); none: no
    /// audit, as kube-apiserver without `--audit-policy-file`.
    pub audit: Option<Arc<Auditor>>,
}

impl ApiState {
    pub fn new(storage: Storage) -> Self {
        ApiState {
            storage,
            registry: registry(),
            metrics: Arc::new(metrics::Metrics::default()),
            join: None,
            kubelet_tls: None,
            modules: Arc::new(crate::registry::ModuleRegistry::default()),
            service_cidr: services::SERVICE_CIDR_DEFAULT,
            node_port_range: nodeports::NODE_PORT_RANGE_DEFAULT,
            authorizer: Authorizer::new(),
            user: Arc::new(UserInfo::loopback_admin()),
            tokens: None,
            audit: None,
        }
    }
}

/// A successful answer: a status, a JSON body, and warnings for the
/// client to print (`Warning: 299` headers, as kubectl shows them).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub warnings: Vec<String>,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Reply {
            status: StatusCode::OK,
            body,
            warnings: Vec::new(),
        }
    }

    pub fn created(body: Value) -> Self {
        Reply {
            status: StatusCode::CREATED,
            ..Reply::ok(body)
        }
    }

    pub fn with_warnings(mut self, warnings: Vec<String>) -> Self {
        self.warnings = warnings;
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        for warning in self.warnings {
            if let Ok(value) = HeaderValue::from_bytes(warning_header(&warning).as_bytes()) {
                response.headers_mut().append("warning", value);
            }
        }
        response
    }
}

/// A `Warning` header (RFC 7234) as kube-apiserver writes it: code 299,
/// no agent, the text as a quoted string (quotes and backslashes escaped,
/// control characters dropped), which client-go and kubectl unquote.
fn warning_header(text: &str) -> String {
    let mut header = String::with_capacity(text.len() + 10);
    header.push_str("299 - \"");
    for character in text.chars().filter(|c| !c.is_control()) {
        if matches!(character, '"' | '\\') {
            header.push('\\');
        }
        header.push(character);
    }
    header.push('"');
    header
}

/// The API server's routes.
pub fn router(state: ApiState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// What the accept loop tells of a request's connection (`crate::tls`):
/// the peer its TLS client certificate names, its place among its
/// address's unauthenticated connections, and the client's address.
struct Connection {
    peer: Option<Peer>,
    ticket: Option<flotilla_serve::Ticket>,
    remote: Option<SocketAddr>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Connection {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let extensions = &parts.extensions;
        Ok(Connection {
            peer: extensions.get::<Peer>().cloned(),
            ticket: extensions.get::<flotilla_serve::Ticket>().cloned(),
            remote: extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(address)| *address),
        })
    }
}

async fn handle(
    State(mut state): State<ApiState>,
    connection: Connection,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let received = k8s_openapi::jiff::Timestamp::now();
    let audit_id = audit::audit_id(&headers);
    let peer = connection.peer.as_ref();
    let request = RequestInfo::read(state.registry, &method, &uri);
    let requester = authenticate(&state, peer, uri.path(), &headers);
    let mut entry = match &state.audit {
        Some(auditor) => auditor.begin(audit::Received {
            audit_id: audit_id.to_str().unwrap_or_default(),
            at: received,
            uri: &uri,
            headers: &headers,
            remote: connection.remote.map(|address| address.ip()),
            attributes: &request.attributes,
            requester: requester.as_ref().ok(),
        }),
        None => audit::Entry::off(),
    };
    let user = requester.and_then(|requester| {
        crate::auth::impersonation::resolve(&state.authorizer, requester, &headers)
    });
    let span = tracing::info_span!(
        "api",
        %method,
        path = uri.path(),
        user = user.as_ref().map_or("", |user| user.name.as_str()),
        audit_id = audit_id.to_str().unwrap_or_default(),
    );
    if let Ok(user) = &user
        && crate::auth::impersonation::requested(&headers)
    {
        entry.impersonated(user);
    }
    let long_running = audit::long_running(&request.attributes);
    let (verb, resource, response) = match user {
        Ok(user) if user.name == crate::auth::user::ANONYMOUS && !anonymous_may(uri.path()) => {
            ("unknown", "", Err(ApiError::unauthorized()))
        }
        Ok(user) => {
            // A valid credential: the connection no longer counts against
            // its address's unauthenticated ones.
            if user.name != crate::auth::user::ANONYMOUS
                && let Some(ticket) = &connection.ticket
            {
                ticket.authenticated();
            }
            state.user = Arc::new(user);
            route(
                &state, peer, &method, &uri, &headers, body, request, &mut entry,
            )
            .instrument(span.clone())
            .await
        }
        Err(error) => ("unknown", "", Err(error)),
    };
    let response = response.unwrap_or_else(|error| {
        let _entered = span.enter();
        tracing::debug!(%error, "request failed");
        entry.failed(&error);
        error.into_response()
    });
    let mut response = entry
        .finish(response, long_running)
        .instrument(span.clone())
        .await;
    response
        .headers_mut()
        .insert(audit::AUDIT_ID_HEADER, audit_id);
    let _entered = span.enter();
    state.metrics.observe(
        verb,
        resource,
        response.status().as_u16(),
        started.elapsed(),
    );
    tracing::debug!(
        status = response.status().as_u16(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "served"
    );
    response
}

/// Paths anyone may read, as Kubernetes' `system:public-info-viewer`.
const PUBLIC_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];

/// Where a request without a credential gets an answer other than 401: the
/// public paths, and joins, which present a bootstrap token instead
/// (`join::authorize`).
fn anonymous_may(path: &str) -> bool {
    PUBLIC_PATHS.contains(&path) || is_join(path)
}

/// Whether `path` is a join, authenticated by its bootstrap token rather
/// than as other requests (a renewal is not: the node presents its
/// certificate).
fn is_join(path: &str) -> bool {
    path.starts_with(crate::join::JOIN_PATH) && path != crate::join::RENEWAL_PATH
}

/// Who the request is from: the user of its client certificate, else of
/// its ServiceAccount token, else anonymous; or, over plain HTTP (served on
/// loopback only) without a token, the machine's own trusted users. (Whom
/// it impersonates is resolved after.) A join's bearer token is its
/// bootstrap token, which only the join checks.
fn authenticate(
    state: &ApiState,
    peer: Option<&Peer>,
    path: &str,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|_| !is_join(path));
    let requester = match (peer, bearer) {
        (
            Some(Peer {
                user: Some(user),
                not_after,
                ..
            }),
            _,
        ) => {
            if not_after.is_some_and(|expiry| expiry <= std::time::SystemTime::now()) {
                tracing::debug!(user = %user.name, "a client certificate expired on an open connection");
                return Err(ApiError::unauthorized());
            }
            user.clone()
        }
        (_, Some(token)) => match &state.tokens {
            Some(tokens) => tokens.authenticate(token, &state.authorizer.graph)?,
            None => return Err(ApiError::unauthorized()),
        },
        (None, None) => UserInfo::loopback_admin(),
        (Some(Peer { user: None, .. }), None) => UserInfo::anonymous(),
    };
    Ok(requester)
}

/// A JSON document encoded ahead of time.
fn json_bytes(body: bytes::Bytes) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// What a request names, read from its method and URI alone, before it is
/// authenticated, as kube-apiserver's RequestInfo: the audit policy decides
/// on its attributes, and so does the authorizer.
struct RequestInfo {
    attributes: Attributes,
    kind: RequestKind,
}

enum RequestKind {
    /// A node renewing its certificate.
    Renewal,
    /// A join, authenticated and authorized by its bootstrap token.
    Join,
    /// An object, a collection or a subresource.
    Object {
        target: Target<'static>,
        params: Params,
    },
    /// An object's path with a query that does not parse.
    MalformedQuery {
        resource: &'static str,
        error: ApiError,
    },
    /// Discovery, health, metrics, OpenAPI, the module registry; none: a
    /// path the API does not know.
    NonResource(Option<Route<'static>>),
}

impl RequestInfo {
    fn read(registry: &'static Registry, method: &Method, uri: &Uri) -> RequestInfo {
        let path = uri.path();
        let non_resource = |kind| RequestInfo {
            attributes: Attributes::non_resource(method, path),
            kind,
        };
        if path == crate::join::RENEWAL_PATH {
            return non_resource(RequestKind::Renewal);
        }
        if is_join(path) {
            return non_resource(RequestKind::Join);
        }
        let target = match path::parse(registry, path) {
            Ok(Route::Object(target)) => target,
            other => return non_resource(RequestKind::NonResource(other.ok())),
        };
        match Query::<BTreeMap<String, String>>::try_from_uri(uri) {
            Ok(Query(params)) => {
                let params = Params(params);
                RequestInfo {
                    attributes: Attributes::resource(method, &target, &params),
                    kind: RequestKind::Object { target, params },
                }
            }
            Err(error) => RequestInfo {
                attributes: Attributes::resource(method, &target, &Params::default()),
                kind: RequestKind::MalformedQuery {
                    resource: target.info.plural,
                    error: ApiError::bad_request(format!("malformed query: {error}")),
                },
            },
        }
    }
}

/// The request's verb and resource (for metrics) and its answer.
#[allow(clippy::too_many_arguments, reason = "the request's parts, each once")]
async fn route(
    state: &ApiState,
    peer: Option<&Peer>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    request: RequestInfo,
    audit: &mut audit::Entry,
) -> (&'static str, &'static str, Result<Response, ApiError>) {
    let path = uri.path();
    let RequestInfo { attributes, kind } = request;
    match kind {
        RequestKind::Renewal => {
            let outcome = match authorize(state, &attributes, audit) {
                Ok(()) => join::renew(state, method, peer).await,
                Err(error) => Err(error),
            };
            ("create", "certificates", outcome)
        }
        RequestKind::Join => (
            "create",
            "join",
            join::route(state, method, path, headers, body).await,
        ),
        RequestKind::NonResource(parsed) => match authorize(state, &attributes, audit) {
            Ok(()) => non_resource(state, method, path, headers, body, parsed).await,
            Err(error) => ("unknown", "", Err(error)),
        },
        RequestKind::MalformedQuery { resource, error } => ("unknown", resource, Err(error)),
        RequestKind::Object { target, params } => {
            let resource = target.info.plural;
            if let Err(error) = authorize(state, &attributes, audit) {
                return (verb_name(&attributes), resource, Err(error));
            }
            let (verb, outcome) = verb(state, method, headers, &target, &params, body, audit).await;
            (verb, resource, outcome)
        }
    }
}

/// The authorizer's decision on the request, noted in its audit record.
fn authorize(
    state: &ApiState,
    attributes: &Attributes,
    audit: &mut audit::Entry,
) -> Result<(), ApiError> {
    let decision = state.authorizer.check(&state.user, attributes);
    audit.authorized(decision.is_ok());
    decision
}

/// The verb a refused request is counted under in the metrics.
fn verb_name(attributes: &Attributes) -> &'static str {
    crate::auth::bootstrap::READ_WRITE
        .iter()
        .find(|verb| **verb == attributes.verb())
        .copied()
        .unwrap_or("unknown")
}

/// `/livez`, `/readyz` and `/healthz` as kube-apiserver answers them:
/// `ok`, or 500 with the failed check. Live while the store member runs;
/// ready (and healthy) while it also knows a leader, so that requests can
/// be served.
fn health(state: &ApiState, path: &str) -> Response {
    use flotilla_raft_store::server::Health;
    let check = path.trim_start_matches('/');
    let failure = match (state.storage.health(), check) {
        (Health::Serving, _) | (Health::NoLeader, "livez") => None,
        (Health::NoLeader, _) => Some("the store member knows no leader (no quorum in reach)"),
        (Health::Stopped, _) => Some("the store member has stopped"),
    };
    match failure {
        None => "ok".into_response(),
        Some(reason) => {
            tracing::debug!(check, reason, "health check failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("[-]store failed: {reason}\n{check} check failed\n"),
            )
                .into_response()
        }
    }
}

/// Discovery, health, metrics, OpenAPI and the module registry.
async fn non_resource(
    state: &ApiState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Body,
    parsed: Option<Route<'static>>,
) -> (&'static str, &'static str, Result<Response, ApiError>) {
    let json = |value: Value| Ok(axum::Json(value).into_response());
    match path {
        "/version" | "/version/" => return ("get", "version", json(discovery::version())),
        "/healthz" | "/readyz" | "/livez" => return ("get", "health", Ok(health(state, path))),
        "/metrics" => return ("get", "metrics", Ok(state.metrics.render().into_response())),
        "/openapi/v2" => return ("get", "openapi", Ok(json_bytes(openapi::v2_document()))),
        "/openapi/v3" => return ("get", "openapi", json(openapi::v3_index(state.registry))),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix(crate::registry::http::PREFIX) {
        return crate::registry::http::serve(state, method, rest, headers, body).await;
    }
    if let Some(group_version) = path.strip_prefix("/openapi/v3/") {
        return (
            "get",
            "openapi",
            openapi::v3_document(group_version)
                .map(json_bytes)
                .ok_or_else(|| ApiError::no_route(path)),
        );
    }
    let document = match parsed {
        Some(Route::CoreVersions) => Some(discovery::core_versions()),
        Some(Route::Groups) => Some(discovery::groups(state.registry)),
        Some(Route::Group(group)) => discovery::group(state.registry, &group),
        Some(Route::Resources { group, version }) => {
            discovery::resources(state.registry, &group, &version)
        }
        Some(Route::Object(_)) | None => None,
    };
    match document {
        Some(document) => ("get", "discovery", json(document)),
        None => ("unknown", "", Err(ApiError::no_route(path))),
    }
}

/// Serves an object request by its method; hands the decoded body to
/// `audit`, which keeps it if its level says so.
async fn verb(
    state: &ApiState,
    method: &Method,
    headers: &HeaderMap,
    target: &Target<'static>,
    params: &Params,
    body: Body,
    audit: &mut audit::Entry,
) -> (&'static str, Result<Response, ApiError>) {
    let collection = target.name.is_none();
    let read_body = || async {
        axum::body::to_bytes(body, REQUEST_BODY_MAX)
            .await
            .map_err(|_| ApiError::too_large(REQUEST_BODY_MAX))
    };
    let reply = |reply: Result<Reply, ApiError>| reply.map(IntoResponse::into_response);
    if target.info.review {
        if *method != Method::POST || !collection || target.subresource.is_some() {
            let kind = target.info.kind;
            let refusal = ApiError::method_not_allowed(format!("{kind} is only created"));
            return ("unknown", Err(refusal));
        }
        let outcome = async {
            let bytes = read_body().await?;
            let object = decode_body(headers, &bytes)?;
            audit.request_object(&object, bytes.len());
            crate::auth::reviews::create(&state.authorizer, &state.user, target, object)
        };
        return ("create", reply(outcome.await));
    }
    if *method == Method::POST
        && target.info.kind == "ServiceAccount"
        && target.subresource.as_deref() == Some("token")
    {
        let outcome = async {
            let bytes = read_body().await?;
            let object = decode_body(headers, &bytes)?;
            audit.request_object(&object, bytes.len());
            tokens::request(state, target, object).await
        };
        return ("create", reply(outcome.await));
    }
    match *method {
        Method::GET if collection => match params.flag("watch") {
            Ok(true) => ("watch", watch::watch(state, target, params).await),
            Ok(false) => ("list", list_or_table(state, target, params, headers).await),
            Err(error) => ("list", Err(error)),
        },
        Method::GET if target.subresource.as_deref() == Some("log") => {
            ("get", logs::proxy(state, target, params).await)
        }
        Method::GET => ("get", get_or_table(state, target, params, headers).await),
        Method::POST => {
            let outcome = async {
                let bytes = read_body().await?;
                let object = decode_body(headers, &bytes)?;
                audit.request_object(&object, bytes.len());
                objects::create(state, target, params, object).await
            };
            ("create", reply(outcome.await))
        }
        Method::PUT if !collection => {
            let outcome = async {
                let bytes = read_body().await?;
                let object = decode_body(headers, &bytes)?;
                audit.request_object(&object, bytes.len());
                objects::update(state, target, params, object).await
            };
            ("update", reply(outcome.await))
        }
        Method::PATCH if !collection => {
            let outcome = async {
                let bytes = read_body().await?;
                let media = request::content_type(headers);
                audit.request_patch(&media, &bytes);
                objects::patch(state, target, params, &media, &bytes).await
            };
            ("patch", reply(outcome.await))
        }
        Method::DELETE => {
            let outcome = async {
                let bytes = read_body().await?;
                // DeleteOptions may come as a body; an empty one is fine.
                let options = if bytes.iter().all(u8::is_ascii_whitespace) {
                    json!({})
                } else {
                    let options = decode_body(headers, &bytes)?;
                    audit.request_object(&options, bytes.len());
                    options
                };
                if collection {
                    list::delete_collection(state, target, params, &options).await
                } else {
                    objects::delete(state, target, params, &options).await
                }
            };
            let verb = if collection {
                "deletecollection"
            } else {
                "delete"
            };
            (verb, reply(outcome.await))
        }
        _ => (
            "unknown",
            Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on {}",
                if collection {
                    "a collection"
                } else {
                    "an object"
                }
            ))),
        ),
    }
}

async fn list_or_table(
    state: &ApiState,
    target: &Target<'static>,
    params: &Params,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let document = list::list(state, target, params).await?;
    if wants_table(headers) {
        let items = document["items"].as_array().cloned().unwrap_or_default();
        let include = params.get("includeObject").unwrap_or("Metadata");
        let table = table::table(target.info, &items, document["metadata"].clone(), include);
        return Ok(axum::Json(table).into_response());
    }
    Ok(axum::Json(document).into_response())
}

async fn get_or_table(
    state: &ApiState,
    target: &Target<'static>,
    params: &Params,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let reply = objects::get(state, target).await?;
    if wants_table(headers) && target.subresource.is_none() {
        let include = params.get("includeObject").unwrap_or("Metadata");
        let metadata = json!({"resourceVersion": reply.body["metadata"]["resourceVersion"]});
        let table = table::table(
            target.info,
            std::slice::from_ref(&reply.body),
            metadata,
            include,
        );
        return Ok(axum::Json(table).into_response());
    }
    Ok(reply.into_response())
}
