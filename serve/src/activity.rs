//! What a connection has in flight, for the idle timeout: a request counts
//! from the moment the service is called until its response body is done
//! (or dropped), so a long response, such as a watch, is activity.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;

use crate::addresses::Ticket;

/// Requests in flight on one connection, and a signal when that changes.
#[derive(Default)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    changed: Notify,
}

impl Activity {
    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    /// Completes once nothing has been in flight for `idle`; any request
    /// starting or ending starts the wait again.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the count is read, so no change is missed.
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(idle) => return,
                () = changed => {}
            }
        }
    }
}

/// One request in flight; it lands when this is dropped.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A service whose requests carry the connection's [`Ticket`] and count
/// as in flight until their response bodies are done.
pub(crate) struct Tracked<S> {
    inner: S,
    ticket: Option<Ticket>,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, ticket: Option<Ticket>, activity: Arc<Activity>) -> Self {
        Tracked {
            inner,
            ticket,
            activity,
        }
    }
}

type Pending<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B> hyper::service::Service<http::Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
{
    type Response = http::Response<GuardedBody<B>>;
    type Error = S::Error;
    type Future = Pending<Self::Response, Self::Error>;

    fn call(&self, mut request: http::Request<Incoming>) -> Self::Future {
        if let Some(ticket) = &self.ticket {
            request.extensions_mut().insert(ticket.clone());
        }
        let in_flight = self.activity.start();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| GuardedBody {
                body: Box::pin(body),
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is done.
pub(crate) struct GuardedBody<B> {
    body: Pin<Box<B>>,
    _in_flight: InFlight,
}

impl<B: Body> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
