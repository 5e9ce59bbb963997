//! Writing a `wasi:http/proxy` service: the node creates a fresh instance for
//! every request and calls the exported `wasi:http/incoming-handler`.
//!
//! This module buffers the whole request body and the whole response body,
//! which suits small request/response services. A handler that must stream
//! uses the raw bindings in [`crate::wasi::http`].

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasi::io::streams::StreamError;

/// Largest request body a handler is given, in bytes. A bigger body is
/// answered with 413 before the handler runs, so a client cannot make an
/// instance buffer without bound.
pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Size of one write to the response stream, in bytes: below the 4 KiB that
/// WASI hosts guarantee `check-write` may permit, so writes never block long.
const WRITE_CHUNK_BYTES: usize = 4096;

/// Size of one read from the request stream, in bytes.
const READ_CHUNK_BYTES: u64 = 64 * 1024;

/// An incoming request, body buffered.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    path_with_query: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    /// The HTTP method, e.g. `GET`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path and query, e.g. `/hello?name=x`.
    pub fn path_with_query(&self) -> &str {
        &self.path_with_query
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_with_query
            .split_once('?')
            .map_or(self.path_with_query.as_str(), |(path, _)| path)
    }

    /// The first value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }

    /// The request body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// A response to send back.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    /// A response with a status code and a body.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// A service: turns one request into one response.
pub trait Handler {
    /// Handles one request. Each request runs in a fresh instance, so state
    /// kept in statics does not survive between requests.
    fn handle(request: Request) -> Response;
}

/// Exports a [`Handler`] as the component's `wasi:http/incoming-handler`.
#[macro_export]
macro_rules! export_http_handler {
    ($handler:ty) => {
        struct FlotillaIncomingHandler;

        impl $crate::wasi::exports::http::incoming_handler::Guest for FlotillaIncomingHandler {
            fn handle(
                request: $crate::wasi::http::types::IncomingRequest,
                response_out: $crate::wasi::http::types::ResponseOutparam,
            ) {
                $crate::http::serve::<$handler>(request, response_out)
            }
        }

        $crate::wasi::http::proxy::export!(FlotillaIncomingHandler with_types_in $crate::wasi);
    };
}

/// Runs a handler for one incoming request; called by [`export_http_handler!`].
#[doc(hidden)]
pub fn serve<H: Handler>(incoming: IncomingRequest, response_out: ResponseOutparam) {
    let response = match read_request(&incoming) {
        Ok(request) => H::handle(request),
        Err(response) => response,
    };
    send_response(response_out, response);
}

fn read_request(incoming: &IncomingRequest) -> Result<Request, Response> {
    let headers = incoming
        .headers()
        .entries()
        .into_iter()
        .collect::<Vec<(String, Vec<u8>)>>();
    let body = read_body(incoming)?;
    Ok(Request {
        method: method_name(&incoming.method()),
        path_with_query: incoming.path_with_query().unwrap_or_else(|| "/".to_owned()),
        headers,
        body,
    })
}

fn read_body(incoming: &IncomingRequest) -> Result<Vec<u8>, Response> {
    let body = incoming
        .consume()
        .map_err(|()| Response::new(400, "cannot read request body\n"))?;
    read_all(body).map_err(|error| match error {
        ReadError::TooLarge => Response::new(413, "request body too large\n"),
        ReadError::Failed => Response::new(400, "cannot read request body\n"),
    })
}

enum ReadError {
    TooLarge,
    Failed,
}

/// Reads a whole body, up to [`REQUEST_BODY_BYTES_MAX`].
fn read_all(body: IncomingBody) -> Result<Vec<u8>, ReadError> {
    let stream = body.stream().map_err(|()| ReadError::Failed)?;
    let mut buffer = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK_BYTES) {
            Ok(chunk) => {
                if buffer.len() + chunk.len() > REQUEST_BODY_BYTES_MAX {
                    return Err(ReadError::TooLarge);
                }
                buffer.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => return Err(ReadError::Failed),
        }
    }
    drop(stream);
    let _trailers = IncomingBody::finish(body);
    Ok(buffer)
}

/// Sends a GET to `url` (`http://host[:port]/path`) through the node's
/// outgoing HTTP, which decides where it may go. Returns the status and the
/// body (up to [`REQUEST_BODY_BYTES_MAX`]), or why it failed.
pub fn get(url: &str) -> Result<(u16, Vec<u8>), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(format!("unsupported URL {url:?}")),
    };
    let (authority, path) = rest
        .find('/')
        .map_or((rest, "/"), |slash| rest.split_at(slash));
    let request = OutgoingRequest::new(Fields::new());
    let valid = request.set_scheme(Some(&scheme)).is_ok()
        && request.set_authority(Some(authority)).is_ok()
        && request.set_path_with_query(Some(path)).is_ok();
    if !valid {
        return Err(format!("invalid URL {url:?}"));
    }
    let body = request
        .body()
        .map_err(|()| "request body unavailable".to_owned())?;
    let future =
        wasi::http::outgoing_handler::handle(request, None).map_err(|code| format!("{code:?}"))?;
    OutgoingBody::finish(body, None).map_err(|code| format!("{code:?}"))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(format!("{code:?}")),
        Some(Err(())) | None => return Err("response already taken".to_owned()),
    };
    let status = response.status();
    let body = response
        .consume()
        .map_err(|()| "response body unavailable".to_owned())?;
    let bytes = read_all(body).map_err(|_| "cannot read response body".to_owned())?;
    Ok((status, bytes))
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".to_owned(),
        Method::Head => "HEAD".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        Method::Delete => "DELETE".to_owned(),
        Method::Connect => "CONNECT".to_owned(),
        Method::Options => "OPTIONS".to_owned(),
        Method::Trace => "TRACE".to_owned(),
        Method::Patch => "PATCH".to_owned(),
        Method::Other(other) => other.clone(),
    }
}

fn send_response(response_out: ResponseOutparam, response: Response) {
    let headers = Fields::new();
    for (name, value) in &response.headers {
        // A header the host forbids is dropped rather than failing the request.
        let _ = headers.append(name, value);
    }
    let outgoing = OutgoingResponse::new(headers);
    // An out-of-range status is a handler bug; answer 500 instead of trapping.
    if outgoing.set_status_code(response.status).is_err() {
        let _ = outgoing.set_status_code(500);
    }
    let Ok(body) = outgoing.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(outgoing));
    let Ok(stream) = body.write() else {
        return;
    };
    for chunk in response.body.chunks(WRITE_CHUNK_BYTES) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}
