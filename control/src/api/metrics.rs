//! Prometheus metrics of the API server: requests by verb, resource and
//! code, a latency histogram per verb and resource, and what became of
//! audit events, in the text format `/metrics` serves.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Histogram bucket upper bounds, in seconds (as the API server's
/// `apiserver_request_duration_seconds`, trimmed).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    total: u64,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    watches_open: AtomicI64,
    /// Audit events by [`AuditOutcome`], in its order.
    audit: [AtomicU64; 4],
}

/// What became of one audit event (`crate::audit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditOutcome {
    /// Queued for the log's writer.
    Queued,
    /// Dropped: the writer's queue was full.
    QueueFull,
    /// Dropped: too large even without its objects.
    TooLarge,
    /// Queued but not written: the log failed.
    WriteFailed,
}

impl AuditOutcome {
    /// The `reason` label of a lost event.
    fn reason(self) -> &'static str {
        match self {
            AuditOutcome::Queued => "",
            AuditOutcome::QueueFull => "queue_full",
            AuditOutcome::TooLarge => "too_large",
            AuditOutcome::WriteFailed => "write_failed",
        }
    }
}

const AUDIT_LOSSES: [AuditOutcome; 3] = [
    AuditOutcome::QueueFull,
    AuditOutcome::TooLarge,
    AuditOutcome::WriteFailed,
];

/// Counts one open watch while it lives.
pub struct WatchGuard(Arc<Metrics>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watches_open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(&'static str, &'static str, u16), u64>,
    latency: BTreeMap<(&'static str, &'static str), Histogram>,
}

impl Metrics {
    pub fn watch_opened(self: &Arc<Self>) -> WatchGuard {
        self.watches_open.fetch_add(1, Ordering::Relaxed);
        WatchGuard(self.clone())
    }

    pub fn observe(
        &self,
        verb: &'static str,
        resource: &'static str,
        code: u16,
        elapsed: Duration,
    ) {
        // A poisoned lock only means a panic mid-update of counters.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *inner.requests.entry((verb, resource, code)).or_default() += 1;
        // A watch's duration is its lifetime, not a latency.
        if verb == "watch" {
            return;
        }
        let seconds = elapsed.as_secs_f64();
        let histogram = inner.latency.entry((verb, resource)).or_default();
        if histogram.counts.is_empty() {
            histogram.counts = vec![0; BUCKETS.len()];
        }
        for (bound, count) in BUCKETS.iter().zip(histogram.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        histogram.sum += seconds;
        histogram.total += 1;
    }

    /// Counts one audit event's outcome.
    pub fn audit(&self, outcome: AuditOutcome) {
        self.audit[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn render_audit(&self, out: &mut String) {
        let count = |outcome: AuditOutcome| self.audit[outcome as usize].load(Ordering::Relaxed);
        out.push_str(
            "# HELP flotilla_apiserver_audit_event_total Audit events queued for the audit log.\n",
        );
        out.push_str("# TYPE flotilla_apiserver_audit_event_total counter\n");
        let _ = writeln!(
            out,
            "flotilla_apiserver_audit_event_total {}",
            count(AuditOutcome::Queued)
        );
        out.push_str(
            "# HELP flotilla_apiserver_audit_dropped_total Audit events lost, by reason.\n",
        );
        out.push_str("# TYPE flotilla_apiserver_audit_dropped_total counter\n");
        for outcome in AUDIT_LOSSES {
            let _ = writeln!(
                out,
                "flotilla_apiserver_audit_dropped_total{{reason=\"{}\"}} {}",
                outcome.reason(),
                count(outcome)
            );
        }
    }

    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        self.render_audit(&mut out);
        out.push_str("# HELP flotilla_apiserver_watches Open watch streams.\n");
        out.push_str("# TYPE flotilla_apiserver_watches gauge\n");
        let _ = writeln!(
            out,
            "flotilla_apiserver_watches {}",
            self.watches_open.load(Ordering::Relaxed)
        );
        out.push_str("# HELP flotilla_apiserver_requests_total API requests by verb, resource and HTTP code.\n");
        out.push_str("# TYPE flotilla_apiserver_requests_total counter\n");
        for ((verb, resource, code), count) in &inner.requests {
            let _ = writeln!(
                out,
                "flotilla_apiserver_requests_total{{verb=\"{verb}\",resource=\"{resource}\",code=\"{code}\"}} {count}"
            );
        }
        out.push_str("# HELP flotilla_apiserver_request_duration_seconds API request latency by verb and resource.\n");
        out.push_str("# TYPE flotilla_apiserver_request_duration_seconds histogram\n");
        for ((verb, resource), histogram) in &inner.latency {
            let labels = format!("verb=\"{verb}\",resource=\"{resource}\"");
            for (bound, count) in BUCKETS.iter().zip(&histogram.counts) {
                let _ = writeln!(
                    out,
                    "flotilla_apiserver_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "flotilla_apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                histogram.total
            );
            let _ = writeln!(
                out,
                "flotilla_apiserver_request_duration_seconds_sum{{{labels}}} {}",
                histogram.sum
            );
            let _ = writeln!(
                out,
                "flotilla_apiserver_request_duration_seconds_count{{{labels}}} {}",
                histogram.total
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_buckets_render_in_prometheus_text() {
        let metrics = Arc::new(Metrics::default());
        let watch = metrics.watch_opened();
        assert!(metrics.render().contains("flotilla_apiserver_watches 1"));
        drop(watch);
        metrics.observe("get", "pods", 200, Duration::from_micros(700));
        metrics.observe("get", "pods", 404, Duration::from_millis(30));
        let text = metrics.render();
        assert!(text.contains(
            "flotilla_apiserver_requests_total{verb=\"get\",resource=\"pods\",code=\"404\"} 1"
        ));
        assert!(text.contains("le=\"0.001\"} 1"));
        assert!(text.contains("le=\"0.05\"} 2"));
        assert!(text.contains("_count{verb=\"get\",resource=\"pods\"} 2"));
    }
}
