//! The Ingress gateway: every agent routes `networking.k8s.io/v1` Ingress
//! rules by host and path to Services, over HTTP and, with certificates
//! from `kubernetes.io/tls` Secrets, HTTPS (chosen by SNI).
//!
//! Matching follows the Ingress specification: an exact host beats a
//! wildcard (`*.example.com`, one label), which beats a rule with no host;
//! then the longest path wins, `Exact` before `Prefix` at equal length
//! (`Prefix` matches whole path elements: `/foo` matches `/foo/bar`, not
//! `/foobar`; `ImplementationSpecific` is `Prefix` here). A request no rule
//! matches goes to a default backend. Only Ingresses of the `flotilla`
//! class, or with no class, are served.
//!
//! This module knows Ingresses and Secrets; the router sends the request.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::table::{ObjectKey, key_of};

/// The IngressClass this gateway serves (besides Ingresses naming none).
pub const INGRESS_CLASS: &str = "flotilla";

/// The Service port a backend names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendPort {
    Number(u16),
    Name(String),
}

/// A Service an Ingress sends traffic to, in the Ingress's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    pub port: BackendPort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PathKind {
    // Ordered so that, at equal length, Exact sorts after Prefix: the
    // best match is the greatest.
    Prefix,
    Exact,
}

#[derive(Debug, Clone)]
struct PathRule {
    path: String,
    kind: PathKind,
    backend: Backend,
}

#[derive(Debug, Clone)]
struct HostRule {
    /// None: any host.
    host: Option<String>,
    paths: Vec<PathRule>,
}

/// One Ingress, as the gateway uses it.
#[derive(Debug, Clone)]
struct IngressRoute {
    rules: Vec<HostRule>,
    default_backend: Option<Backend>,
    /// TLS hosts and the Secret (in the Ingress's namespace) with their
    /// certificate.
    tls: Vec<(Vec<String>, ObjectKey)>,
}

/// How well a host pattern matched: exact beats wildcard beats none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HostMatch {
    Any,
    Wildcard,
    Exact,
}

/// Every served Ingress, and the certificates of `kubernetes.io/tls`
/// Secrets. Cheap to clone; clones share it.
#[derive(Clone, Default)]
pub struct Ingresses {
    routes: Arc<RwLock<BTreeMap<ObjectKey, Arc<IngressRoute>>>>,
    certificates: Arc<RwLock<BTreeMap<ObjectKey, Arc<CertifiedKey>>>>,
    /// Woken when the Ingresses change, for whoever follows the Secrets
    /// they name (`Ingresses::changed`).
    changes: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Ingresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingresses").finish_non_exhaustive()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A poisoned lock means a panic between two map operations; the map
    // itself is whole.
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Ingresses {
    /// Adds or replaces an Ingress; one of another class is forgotten.
    pub fn upsert(&self, ingress: &Ingress) {
        let Some(key) = key_of(&ingress.metadata) else {
            return;
        };
        let spec = ingress.spec.clone().unwrap_or_default();
        let class = spec.ingress_class_name.as_deref();
        if class.is_some_and(|class| class != INGRESS_CLASS) {
            write(&self.routes).remove(&key);
            self.changes.notify_one();
            return;
        }
        let backend = |backend: &IngressBackend| {
            let service = backend.service.as_ref()?;
            let port = service.port.as_ref()?;
            let port = match (&port.name, port.number) {
                (Some(name), _) if !name.is_empty() => BackendPort::Name(name.clone()),
                (_, Some(number)) => BackendPort::Number(u16::try_from(number).ok()?),
                _ => return None,
            };
            Some(Backend {
                namespace: key.0.clone(),
                service: service.name.clone(),
                port,
            })
        };
        let rules = spec
            .rules
            .iter()
            .flatten()
            .map(|rule| HostRule {
                host: rule
                    .host
                    .as_deref()
                    .filter(|host| !host.is_empty())
                    .map(str::to_ascii_lowercase),
                paths: rule
                    .http
                    .iter()
                    .flat_map(|http| http.paths.iter())
                    .filter_map(|path| {
                        Some(PathRule {
                            path: path.path.clone().unwrap_or_else(|| "/".to_owned()),
                            kind: if path.path_type == "Exact" {
                                PathKind::Exact
                            } else {
                                PathKind::Prefix
                            },
                            backend: backend(&path.backend)?,
                        })
                    })
                    .collect(),
            })
            .collect();
        let tls = spec
            .tls
            .iter()
            .flatten()
            .filter_map(|tls| {
                let hosts = tls
                    .hosts
                    .iter()
                    .flatten()
                    .map(|host| host.to_ascii_lowercase())
                    .collect();
                Some((hosts, (key.0.clone(), tls.secret_name.clone()?)))
            })
            .collect();
        let route = IngressRoute {
            rules,
            default_backend: spec.default_backend.as_ref().and_then(backend),
            tls,
        };
        write(&self.routes).insert(key, Arc::new(route));
        self.changes.notify_one();
    }

    /// Forgets an Ingress.
    pub fn remove(&self, namespace: &str, name: &str) {
        write(&self.routes).remove(&(namespace.to_owned(), name.to_owned()));
        self.changes.notify_one();
    }

    /// The Secrets the served Ingresses name for TLS, as `namespace/name`.
    pub fn tls_secrets(&self) -> std::collections::BTreeSet<ObjectKey> {
        read(&self.routes)
            .values()
            .flat_map(|route| route.tls.iter().map(|(_, secret)| secret.clone()))
            .collect()
    }

    /// Returns once the Ingresses changed since the last call returned (at
    /// once if they did meanwhile). Meant for one follower.
    pub async fn changed(&self) {
        self.changes.notified().await;
    }

    /// The Ingresses held, as `namespace/name`.
    pub fn keys(&self) -> Vec<ObjectKey> {
        read(&self.routes).keys().cloned().collect()
    }

    /// Adds or replaces a Secret's certificate (only `kubernetes.io/tls`
    /// Secrets hold one; others, and unreadable ones, are forgotten).
    pub fn upsert_secret(&self, secret: &Secret) {
        let Some(key) = key_of(&secret.metadata) else {
            return;
        };
        match certified_key(secret) {
            Some(certificate) => {
                write(&self.certificates).insert(key, Arc::new(certificate));
            }
            None => {
                write(&self.certificates).remove(&key);
            }
        }
    }

    /// Forgets a Secret's certificate.
    pub fn remove_secret(&self, namespace: &str, name: &str) {
        write(&self.certificates).remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// The Secrets held, as `namespace/name`.
    pub fn secret_keys(&self) -> Vec<ObjectKey> {
        read(&self.certificates).keys().cloned().collect()
    }

    /// The backend for a request to `host` (port stripped) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<Backend> {
        let host = host.to_ascii_lowercase();
        let routes = read(&self.routes);
        let best = routes
            .values()
            .flat_map(|route| route.rules.iter())
            .filter_map(|rule| Some((host_match(rule.host.as_deref(), &host)?, rule)))
            .flat_map(|(host_score, rule)| {
                rule.paths.iter().filter_map(move |candidate| {
                    path_matches(candidate, path).then_some((
                        (host_score, candidate.path.len(), candidate.kind),
                        candidate,
                    ))
                })
            })
            // On a tie the first Ingress (by namespace/name) wins: keep the
            // first of equal scores.
            .fold(
                None::<(_, &PathRule)>,
                |best, (score, candidate)| match best {
                    Some((best_score, _)) if best_score >= score => best,
                    _ => Some((score, candidate)),
                },
            );
        if let Some((_, rule)) = best {
            return Some(rule.backend.clone());
        }
        routes
            .values()
            .find_map(|route| route.default_backend.clone())
    }

    /// The certificate for an HTTPS request naming `server_name` (SNI):
    /// from the Secret of an Ingress TLS section listing that host.
    fn certificate(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let server_name = server_name.to_ascii_lowercase();
        let routes = read(&self.routes);
        let secret = routes.values().find_map(|route| {
            route.tls.iter().find_map(|(hosts, secret)| {
                hosts
                    .iter()
                    .any(|host| host_match(Some(host), &server_name).is_some())
                    .then_some(secret)
            })
        })?;
        read(&self.certificates).get(secret).cloned()
    }
}

/// How `pattern` (a rule's host, None for any) matches `host`.
fn host_match(pattern: Option<&str>, host: &str) -> Option<HostMatch> {
    let Some(pattern) = pattern else {
        return Some(HostMatch::Any);
    };
    if let Some(suffix) = pattern.strip_prefix("*.") {
        // One label only: `*.example.com` matches `a.example.com`, not
        // `a.b.example.com` nor `example.com`.
        let (label, rest) = host.split_once('.')?;
        return (!label.is_empty() && rest == suffix).then_some(HostMatch::Wildcard);
    }
    (pattern == host).then_some(HostMatch::Exact)
}

fn path_matches(rule: &PathRule, path: &str) -> bool {
    match rule.kind {
        PathKind::Exact => rule.path == path,
        PathKind::Prefix => {
            let prefix = rule.path.trim_end_matches('/');
            if prefix.is_empty() {
                return true;
            }
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }
    }
}

fn certified_key(secret: &Secret) -> Option<CertifiedKey> {
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return None;
    }
    let data = secret.data.as_ref()?;
    let chain = CertificateDer::pem_slice_iter(&data.get("tls.crt")?.0)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(&data.get("tls.key")?.0).ok()?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).ok()?;
    Some(CertifiedKey::new(chain, signing))
}

/// Chooses the HTTPS gateway's certificate by SNI.
#[derive(Debug)]
pub(super) struct SniResolver(pub(super) Ingresses);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certificate(hello.server_name()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingresses(yamls: &[&str]) -> Ingresses {
        let ingresses = Ingresses::default();
        for yaml in yamls {
            let ingress: Ingress = serde_yaml::from_str(yaml).expect("an Ingress");
            ingresses.upsert(&ingress);
        }
        ingresses
    }

    fn check(ingresses: &Ingresses, host: &str, path: &str, expected: Option<&str>) {
        let found = ingresses.route(host, path).map(|backend| {
            let port = match backend.port {
                BackendPort::Number(number) => number.to_string(),
                BackendPort::Name(name) => name,
            };
            format!("{}/{}:{port}", backend.namespace, backend.service)
        });
        assert_eq!(found.as_deref(), expected, "{host}{path}");
    }

    const SHOP: &str = "
metadata: {name: shop, namespace: web}
spec:
  defaultBackend: {service: {name: fallback, port: {number: 80}}}
  rules:
    - host: shop.example
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: front, port: {number: 80}}}}
          - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {name: http}}}}
          - {path: /api/v1/login, pathType: Exact, backend: {service: {name: login, port: {number: 8080}}}}
    - host: '*.shop.example'
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: tenant, port: {number: 80}}}}
    - http:
        paths:
          - {path: /status, pathType: Exact, backend: {service: {name: status, port: {number: 80}}}}
";

    #[test]
    fn hosts_and_paths_match_as_the_ingress_specification_says() {
        let ingresses = ingresses(&[SHOP]);
        check(&ingresses, "shop.example", "/", Some("web/front:80"));
        check(&ingresses, "Shop.Example", "/cart", Some("web/front:80"));
        check(&ingresses, "shop.example", "/api", Some("web/api:http"));
        check(
            &ingresses,
            "shop.example",
            "/api/v1/x",
            Some("web/api:http"),
        );
        check(&ingresses, "shop.example", "/apis", Some("web/front:80"));
        check(
            &ingresses,
            "shop.example",
            "/api/v1/login",
            Some("web/login:8080"),
        );
        check(
            &ingresses,
            "shop.example",
            "/api/v1/login/",
            Some("web/api:http"),
        );
        check(&ingresses, "eu.shop.example", "/", Some("web/tenant:80"));
        check(
            &ingresses,
            "a.eu.shop.example",
            "/",
            Some("web/fallback:80"),
        );
        check(
            &ingresses,
            "other.example",
            "/status",
            Some("web/status:80"),
        );
        check(&ingresses, "other.example", "/", Some("web/fallback:80"));
    }

    #[test]
    fn other_classes_are_not_served() {
        let ingresses = ingresses(&[
            "{metadata: {name: x, namespace: a}, spec: {ingressClassName: nginx, defaultBackend: {service: {name: x, port: {number: 80}}}}}",
            "{metadata: {name: y, namespace: b}, spec: {ingressClassName: flotilla, rules: [{http: {paths: [{path: /y, pathType: Prefix, backend: {service: {name: y, port: {number: 81}}}}]}}]}}",
        ]);
        check(&ingresses, "any", "/", None);
        check(&ingresses, "any", "/y/z", Some("b/y:81"));
        assert_eq!(ingresses.keys(), [("b".to_owned(), "y".to_owned())]);
    }
}
