//! Who may do what on the API: Kubernetes RBAC, starting from the default
//! policy every cluster is created with ([`bootstrap`]).

pub mod bootstrap;
