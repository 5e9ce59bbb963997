//! The agent's Prometheus counters, rendered in the text format its
//! `/metrics` serves: pods running, status writes, lease renewals, node
//! status writes and errors by kind.
//!
//! This module only counts; the loops decide what to count.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// What went wrong, for the `errors` counter's `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A pod status write failed.
    PodStatus,
    /// A lease renewal failed.
    Lease,
    /// A node status write failed.
    NodeStatus,
    /// The pod watch failed (it reconnects with back-off).
    Watch,
    /// A pod could not be started, stopped or confirmed deleted.
    Pod,
}

impl ErrorKind {
    const ALL: [ErrorKind; 5] = [
        ErrorKind::PodStatus,
        ErrorKind::Lease,
        ErrorKind::NodeStatus,
        ErrorKind::Watch,
        ErrorKind::Pod,
    ];

    fn label(self) -> &'static str {
        match self {
            ErrorKind::PodStatus => "pod_status",
            ErrorKind::Lease => "lease",
            ErrorKind::NodeStatus => "node_status",
            ErrorKind::Watch => "watch",
            ErrorKind::Pod => "pod",
        }
    }
}

/// The agent's counters. Shared by every loop; all updates are relaxed
/// atomics because each counter is read on its own.
#[derive(Debug, Default)]
pub struct Metrics {
    pod_status_writes: AtomicU64,
    lease_renewals: AtomicU64,
    node_status_writes: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
}

impl Metrics {
    pub fn pod_status_written(&self) {
        self.pod_status_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lease_renewed(&self) {
        self.lease_renewals.fetch_add(1, Ordering::Relaxed);
    }

    pub fn node_status_written(&self) {
        self.node_status_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition, with the gauge of running pods taken by the caller.
    pub fn render(&self, pods_running: usize) -> String {
        let mut out = String::new();
        let counters = [
            (
                "flotilla_agent_pod_status_writes_total",
                "Pod statuses written through the API.",
                &self.pod_status_writes,
            ),
            (
                "flotilla_agent_lease_renewals_total",
                "Node lease renewals.",
                &self.lease_renewals,
            ),
            (
                "flotilla_agent_node_status_writes_total",
                "Node status heartbeats written.",
                &self.node_status_writes,
            ),
        ];
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP flotilla_agent_pods_running Pods in phase Running on this node.\n\
             # TYPE flotilla_agent_pods_running gauge\n\
             flotilla_agent_pods_running {pods_running}"
        );
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP flotilla_agent_errors_total Errors in the agent's loops, by kind.\n\
             # TYPE flotilla_agent_errors_total counter"
        );
        for kind in ErrorKind::ALL {
            let _ = writeln!(
                out,
                "flotilla_agent_errors_total{{kind=\"{}\"}} {}",
                kind.label(),
                self.errors[kind as usize].load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.lease_renewed();
        metrics.lease_renewed();
        metrics.error(ErrorKind::Watch);
        let text = metrics.render(3);
        assert!(text.contains("\nflotilla_agent_pods_running 3\n"), "{text}");
        assert!(text.contains("\nflotilla_agent_lease_renewals_total 2\n"));
        assert!(text.contains("flotilla_agent_errors_total{kind=\"watch\"} 1\n"));
        assert!(text.contains("flotilla_agent_errors_total{kind=\"lease\"} 0\n"));
    }
}
