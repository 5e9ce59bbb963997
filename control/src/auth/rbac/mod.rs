//! Role-based access control as Kubernetes has it: `rules` matches a rule
//! to a request (and one rule set to another, for escalation checks),
//! `index` holds the Roles, ClusterRoles and bindings in memory.

pub mod index;
pub mod rules;
