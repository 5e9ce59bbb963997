//! The pod network's counters, in Prometheus' text format for the agent's
//! `/metrics`: where requests went (in-process, over the mesh, arriving
//! from the mesh), guests' TCP connections the same way, which endpoints
//! Services chose (this node's or another's), retries, denials and
//! failures.
//!
//! This module only counts; the router decides what to count.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// One counter family: name, help, label name ("" for none) and samples
/// by label value.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, u64)>,
);

/// Where a guest's TCP connection went.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TcpPath {
    Local = 0,
    MeshOut = 1,
    MeshIn = 2,
    Egress = 3,
}

/// Counters of one node's network. Relaxed atomics: each is read alone.
#[derive(Debug, Default)]
pub struct NetworkMetrics {
    local: AtomicU64,
    mesh: AtomicU64,
    inbound: AtomicU64,
    egress: AtomicU64,
    tcp: [AtomicU64; 4],
    same_node: AtomicU64,
    other_node: AtomicU64,
    retries: AtomicU64,
    denied_egress: AtomicU64,
    denied_policy: AtomicU64,
    errors: AtomicU64,
}

impl NetworkMetrics {
    pub(crate) fn local(&self) {
        self.local.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn mesh(&self) {
        self.mesh.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn egress(&self) {
        self.egress.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn inbound(&self) {
        self.inbound.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tcp(&self, path: TcpPath) {
        self.tcp[path as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn picked(&self, same_node: bool) {
        let counter = if same_node {
            &self.same_node
        } else {
            &self.other_node
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn denied(&self, reason: &'static str) {
        match reason {
            "egress" => self.denied_egress.fetch_add(1, Ordering::Relaxed),
            "policy" => self.denied_policy.fetch_add(1, Ordering::Relaxed),
            _ => self.errors.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests served in-process, sent over the mesh, and received from it.
    pub fn requests(&self) -> (u64, u64, u64) {
        (
            self.local.load(Ordering::Relaxed),
            self.mesh.load(Ordering::Relaxed),
            self.inbound.load(Ordering::Relaxed),
        )
    }

    /// Guests' TCP connections made in-process, over the mesh, and
    /// arriving from it.
    pub fn tcp_connections(&self) -> (u64, u64, u64) {
        let load = |path: TcpPath| self.tcp[path as usize].load(Ordering::Relaxed);
        (
            load(TcpPath::Local),
            load(TcpPath::MeshOut),
            load(TcpPath::MeshIn),
        )
    }

    /// Requests refused because they would leave the cluster.
    pub fn denied_egress(&self) -> u64 {
        self.denied_egress.load(Ordering::Relaxed)
    }

    /// Requests refused by a NetworkPolicy.
    pub fn denied_by_policy(&self) -> u64 {
        self.denied_policy.load(Ordering::Relaxed)
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let tcp = |path: TcpPath| load(&self.tcp[path as usize]);
        let families: [Family; 6] = [
            (
                "flotilla_network_requests_total",
                "Requests the pod network carried, by path.",
                "path",
                vec![
                    ("local", load(&self.local)),
                    ("mesh_out", load(&self.mesh)),
                    ("mesh_in", load(&self.inbound)),
                    ("egress", load(&self.egress)),
                ],
            ),
            (
                "flotilla_network_tcp_connections_total",
                "Guests' TCP connections the pod network carried, by path.",
                "path",
                vec![
                    ("local", tcp(TcpPath::Local)),
                    ("mesh_out", tcp(TcpPath::MeshOut)),
                    ("mesh_in", tcp(TcpPath::MeshIn)),
                    ("egress", tcp(TcpPath::Egress)),
                ],
            ),
            (
                "flotilla_network_endpoint_choices_total",
                "Service endpoints chosen, by where they run.",
                "locality",
                vec![
                    ("same_node", load(&self.same_node)),
                    ("other_node", load(&self.other_node)),
                ],
            ),
            (
                "flotilla_network_retries_total",
                "Idempotent requests sent to another endpoint after one could not be reached.",
                "",
                vec![("", load(&self.retries))],
            ),
            (
                "flotilla_network_denied_total",
                "Requests and connections refused by policy, by reason.",
                "reason",
                vec![
                    ("egress", load(&self.denied_egress)),
                    ("policy", load(&self.denied_policy)),
                ],
            ),
            (
                "flotilla_network_errors_total",
                "Requests that could not be routed or failed on the way.",
                "",
                vec![("", load(&self.errors))],
            ),
        ];
        for (name, help, label, samples) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (value_label, value) in samples {
                if label.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{label}=\"{value_label}\"}} {value}");
                }
            }
        }
        out
    }
}
