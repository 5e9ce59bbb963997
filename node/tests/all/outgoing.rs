//! Outgoing `wasi:http` goes to the node's `OutgoingHttp`: refused by
//! default, carried by whatever the node plugs in (the pod network, later).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flotilla_node::{
    HttpError, LocalSource, NodeRuntime, OutgoingFuture, OutgoingHttp, RequestOptions, WasiBody,
};
use http_body_util::{BodyExt, Full};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_requests_are_refused_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let handle = runtime
        .run_pod(&hello_pod("caller"), &Default::default())
        .unwrap();
    wait_until(&handle, "running", |s| running(s, "hello")).await;
    let (code, body) = get(&runtime, handle.uid(), 8080, "/outbound")
        .await
        .unwrap();
    assert_eq!(
        (code, body.as_str()),
        (
            502,
            "outbound request failed: ErrorCode::HttpRequestDenied\n"
        )
    );
}

/// Answers every request itself and remembers who asked for what.
#[derive(Default)]
struct Canned {
    seen: Mutex<Vec<(String, String)>>,
}

impl OutgoingHttp for Canned {
    fn send(
        &self,
        pod_uid: &str,
        request: http::Request<WasiBody>,
        _: Option<RequestOptions>,
    ) -> OutgoingFuture {
        self.seen
            .lock()
            .unwrap()
            .push((pod_uid.to_owned(), request.uri().to_string()));
        Box::pin(async {
            let body = Full::new(Bytes::from_static(b"from the mesh"))
                .map_err(|never: Infallible| -> HttpError { match never {} })
                .boxed_unsync();
            Ok(http::Response::new(body))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_requests_go_to_the_plugged_in_carrier() {
    let dir = tempfile::tempdir().unwrap();
    let carrier = Arc::new(Canned::default());
    let runtime = NodeRuntime::with_outgoing_http(
        config(dir.path()),
        Arc::new(LocalSource::files_only()),
        carrier.clone(),
    )
    .unwrap();
    let handle = runtime
        .run_pod(&hello_pod("caller"), &Default::default())
        .unwrap();
    wait_until(&handle, "running", |s| running(s, "hello")).await;
    let (code, body) = get(&runtime, handle.uid(), 8080, "/outbound")
        .await
        .unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "upstream said 200: from the mesh")
    );
    let seen = carrier.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(
            handle.uid().to_owned(),
            "http://upstream.example/".to_owned()
        )]
    );
}
