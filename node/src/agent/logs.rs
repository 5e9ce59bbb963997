//! The agent's kubelet endpoint: container logs for `kubectl logs` (which
//! the API server proxies `pods/{name}/log` to), `/healthz` and
//! Prometheus `/metrics`, over plain HTTP on loopback until nodes get
//! certificates from the cluster.
//!
//! `GET /containerLogs/{namespace}/{pod}/{container}` takes kubelet's query
//! parameters: `follow`, `previous`, `tailLines`, `timestamps`,
//! `sinceSeconds`, `sinceTime` and `limitBytes`. The body is the log as
//! text, one line per line, each prefixed with its RFC 3339 time and a
//! space when `timestamps` is true.
//!
//! This module reads logs from the runtime; it knows nothing of the API.

use std::collections::HashMap;
use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::jiff::Timestamp;

use super::metrics::Metrics;
use super::pods::PodDirectory;
use crate::{Error, LogLine, LogQuery, NodeRuntime};

/// What the endpoint's handlers read.
#[derive(Clone)]
pub struct Endpoint {
    pub runtime: NodeRuntime,
    pub directory: PodDirectory,
    pub metrics: Arc<Metrics>,
    /// The pod network, whose counters `/metrics` shows too.
    pub network: Option<crate::net::PodNetwork>,
}

/// The endpoint's routes.
pub fn router(endpoint: Endpoint) -> Router {
    Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(endpoint)
}

/// A request the endpoint refuses, as kubelet does: a status and a line of text.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, format!("{}\n", self.message)).into_response()
    }
}

impl From<Error> for Refusal {
    fn from(error: Error) -> Self {
        let status = match error {
            Error::PodNotFound { .. } | Error::ContainerNotFound { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: error.to_string(),
        }
    }
}

/// The query of a log request, checked.
#[derive(Debug, Default, PartialEq)]
struct LogParams {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<usize>,
    since: Option<SystemTime>,
    limit_bytes: Option<usize>,
}

impl LogParams {
    fn parse(query: &HashMap<String, String>, now: SystemTime) -> Result<Self, Refusal> {
        let flag = |name: &str| query.get(name).map_or(Ok(false), |v| parse_bool(name, v));
        let count = |name: &str| -> Result<Option<usize>, Refusal> {
            query
                .get(name)
                .map(|value| {
                    value.parse::<usize>().map_err(|_| {
                        Refusal::bad_request(format!("{name}: {value:?} is not a whole number"))
                    })
                })
                .transpose()
        };
        let since_seconds = count("sinceSeconds")?;
        let since_time = query.get("sinceTime");
        let since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err(Refusal::bad_request(
                    "at most one of sinceTime or sinceSeconds may be given",
                ));
            }
            (Some(0), None) => return Err(Refusal::bad_request("sinceSeconds must be positive")),
            (Some(secs), None) => now.checked_sub(Duration::from_secs(secs as u64)),
            (None, Some(text)) => Some(SystemTime::from(Timestamp::from_str(text).map_err(
                |error| {
                    Refusal::bad_request(format!("sinceTime: {text:?} is not RFC 3339: {error}"))
                },
            )?)),
            (None, None) => None,
        };
        let limit_bytes = count("limitBytes")?;
        if limit_bytes == Some(0) {
            return Err(Refusal::bad_request("limitBytes must be positive"));
        }
        Ok(Self {
            follow: flag("follow")?,
            previous: flag("previous")?,
            timestamps: flag("timestamps")?,
            tail_lines: count("tailLines")?,
            since,
            limit_bytes,
        })
    }

    fn query(&self) -> LogQuery {
        LogQuery {
            tail_lines: self.tail_lines,
            since: self.since,
            previous: self.previous,
        }
    }
}

/// Booleans as Go's `strconv.ParseBool` reads them, which is what kubelet
/// accepts.
fn parse_bool(name: &str, value: &str) -> Result<bool, Refusal> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(Refusal::bad_request(format!(
            "{name}: {value:?} is not a boolean"
        ))),
    }
}

#[tracing::instrument(skip(endpoint, query))]
async fn container_logs(
    State(endpoint): State<Endpoint>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let params = LogParams::parse(&query, SystemTime::now())?;
    let uid = endpoint
        .directory
        .uid(&namespace, &pod)
        .ok_or_else(|| Refusal::not_found(format!("pod {namespace}/{pod} is not on this node")))?;
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !params.follow {
        let lines = endpoint.runtime.logs(&uid, &container, &params.query())?;
        let mut body = Vec::new();
        for line in &lines {
            body.extend_from_slice(&render(line, params.timestamps));
        }
        if let Some(limit) = params.limit_bytes {
            body.truncate(limit);
        }
        return Ok((text_plain, body).into_response());
    }
    let follower = endpoint
        .runtime
        .follow_logs(&uid, &container, &params.query())?;
    let remaining = params.limit_bytes.unwrap_or(usize::MAX);
    let timestamps = params.timestamps;
    // Ends when the container instance ends (as `kubectl logs -f` does),
    // when the byte limit is reached, or when the client goes away.
    let stream = futures::stream::unfold(
        (follower, remaining),
        move |(mut follower, remaining)| async move {
            if remaining == 0 {
                return None;
            }
            let line = follower.next().await?;
            let mut bytes = render(&line, timestamps);
            bytes.truncate(remaining);
            let remaining = remaining - bytes.len();
            Some((
                Ok::<_, Infallible>(Bytes::from(bytes)),
                (follower, remaining),
            ))
        },
    );
    Ok((text_plain, Body::from_stream(stream)).into_response())
}

/// One log line as the endpoint writes it.
fn render(line: &LogLine, timestamps: bool) -> Vec<u8> {
    let mut out = String::with_capacity(line.text.len() + 40);
    if timestamps {
        // RFC 3339 with as many fractional digits as needed, as Go's RFC3339Nano.
        if let Ok(time) = Timestamp::try_from(line.time) {
            out.push_str(&time.to_string());
            out.push(' ');
        }
    }
    out.push_str(&line.text);
    out.push('\n');
    out.into_bytes()
}

async fn metrics(State(endpoint): State<Endpoint>) -> Response {
    let running = endpoint
        .runtime
        .pod_uids()
        .iter()
        .filter_map(|uid| endpoint.runtime.pod_status(uid))
        .filter(|status| status.phase.as_deref() == Some("Running"))
        .count();
    let mut text = endpoint.metrics.render(running);
    if let Some(network) = &endpoint.network {
        text.push_str(&network.metrics().render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<LogParams, Refusal> {
        let query = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        LogParams::parse(&query, SystemTime::UNIX_EPOCH + Duration::from_secs(1000))
    }

    #[test]
    fn kubelet_query_parameters() {
        assert_eq!(parse(&[]).unwrap(), LogParams::default());
        let params = parse(&[
            ("follow", "true"),
            ("previous", "1"),
            ("timestamps", "True"),
            ("tailLines", "5"),
            ("sinceSeconds", "10"),
            ("limitBytes", "100"),
        ])
        .unwrap();
        assert_eq!(
            params,
            LogParams {
                follow: true,
                previous: true,
                timestamps: true,
                tail_lines: Some(5),
                since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(990)),
                limit_bytes: Some(100),
            }
        );
        let since = parse(&[("sinceTime", "1970-01-01T00:01:40Z")]).unwrap();
        assert_eq!(
            since.since,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100))
        );
    }

    #[test]
    fn bad_queries_are_refused_with_the_reason() {
        for (pairs, why) in [
            (&[("follow", "yes")][..], "follow"),
            (&[("tailLines", "-1")][..], "tailLines"),
            (&[("limitBytes", "0")][..], "limitBytes"),
            (&[("sinceSeconds", "0")][..], "sinceSeconds"),
            (&[("sinceTime", "yesterday")][..], "sinceTime"),
            (
                &[("sinceTime", "1970-01-01T00:00:00Z"), ("sinceSeconds", "1")][..],
                "at most one",
            ),
        ] {
            let refusal = parse(pairs).unwrap_err();
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
            assert!(
                refusal.message.contains(why),
                "{pairs:?}: {}",
                refusal.message
            );
        }
    }

    #[test]
    fn lines_render_with_optional_timestamps() {
        let line = LogLine {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1500),
            stream: crate::LogStream::Stdout,
            text: "hello".to_owned(),
        };
        assert_eq!(render(&line, false), b"hello\n");
        assert_eq!(render(&line, true), b"1970-01-01T00:00:01.5Z hello\n");
    }
}
