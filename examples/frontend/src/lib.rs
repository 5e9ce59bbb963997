//! `frontend`: a `wasi:http/proxy` service that calls a backend Service by
//! its cluster name, with an ordinary URL and no SDK routing of its own:
//! the node's pod network resolves `http://hello-http.default/` as cluster
//! DNS would and carries the request, in-process or over the mesh.
//!
//! - `/` calls `BACKEND_URL` (set in `k8s.yaml`) and says who answered;
//! - `/call?url=URL` calls any URL and reports what came back, for trying
//!   the network's routes (`localhost:PORT`, a pod IP, a ClusterIP, a
//!   Service name, the outside) from inside a pod;
//! - `/healthz` answers `ok` for the probes.

use flotilla_sdk::http::{Handler, Request, Response};

struct Frontend;

impl Handler for Frontend {
    fn handle(request: Request) -> Response {
        let pod = flotilla_sdk::pod::name();
        match request.path() {
            "/healthz" => Response::new(200, "ok\n"),
            "/call" => match query_value(request.path_with_query(), "url") {
                Some(url) => call(&pod, url),
                None => Response::new(400, "missing ?url=\n"),
            },
            _ => {
                let backend = flotilla_sdk::pod::env("BACKEND_URL")
                    .unwrap_or_else(|| "http://hello-http.default/".to_owned());
                call(&pod, &backend)
            }
        }
    }
}

/// Calls `url` and reports the answer: 200 with the backend's status and
/// body when it answered, 502 with the error when it could not be reached.
fn call(pod: &str, url: &str) -> Response {
    match flotilla_sdk::http::get(url) {
        Ok((status, body)) => Response::new(
            200,
            format!(
                "frontend pod={pod} called {url}: {status} {}",
                String::from_utf8_lossy(&body)
            ),
        )
        .with_header("content-type", "text/plain"),
        Err(error) => Response::new(502, format!("frontend pod={pod} called {url}: {error}\n")),
    }
}

/// The raw value of `name` in the query (up to the next `&`).
fn query_value<'a>(path_with_query: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path_with_query.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

flotilla_sdk::export_http_handler!(Frontend);
