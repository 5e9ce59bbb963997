//! `hello-http`: a `wasi:http/proxy` service. It answers every request with a
//! greeting, the name of the pod serving it (from `POD_NAME`) and the value of
//! `GREETING_TARGET`, both set by the pod spec in `k8s.yaml`. `/healthz` answers
//! `ok` (the probes' path), `/unhealthy` answers 503, `/busy` spins until
//! the node's request timeout ends it, and `/outbound` calls
//! `http://upstream.example/` through the node's outgoing HTTP.

use flotilla_sdk::http::{Handler, Request, Response};

struct Hello;

impl Handler for Hello {
    fn handle(request: Request) -> Response {
        match request.path() {
            "/healthz" => return Response::new(200, "ok\n"),
            // Always failing, for liveness-probe tests.
            "/unhealthy" => return Response::new(503, "unhealthy\n"),
            // Never answers, for request-timeout tests: the node ends it.
            "/busy" => busy(),
            // Calls out through the node's outgoing HTTP (denied by default).
            "/outbound" => return outbound(),
            _ => {}
        }
        let target =
            flotilla_sdk::pod::env("GREETING_TARGET").unwrap_or_else(|| "world".to_owned());
        let body = format!(
            "hello, {target}! pod={} path={}\n",
            flotilla_sdk::pod::name(),
            request.path()
        );
        Response::new(200, body).with_header("content-type", "text/plain")
    }
}

fn outbound() -> Response {
    match flotilla_sdk::http::get("http://upstream.example/") {
        Ok((status, body)) => Response::new(
            200,
            format!("upstream said {status}: {}", String::from_utf8_lossy(&body)),
        ),
        Err(error) => Response::new(502, format!("outbound request failed: {error}\n")),
    }
}

fn busy() -> ! {
    let mut spins = 0u64;
    loop {
        spins = std::hint::black_box(spins.wrapping_add(1));
    }
}

flotilla_sdk::export_http_handler!(Hello);
