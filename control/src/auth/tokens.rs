//! ServiceAccount tokens as Kubernetes issues them: bound, signed JWTs
//! from the TokenRequest subresource (`kubectl create token NAME
//! --duration`), and their authentication.
//!
//! A token is an ES256 JWT signed with the servers' shared key
//! (`sa.key` beside the cluster CA; a joining server receives it with the
//! CA), naming its ServiceAccount and, when bound, a Pod, a Secret or a
//! Node, each with its uid. It authenticates while its signature, issuer,
//! audience and lifetime hold and the objects it names still exist with
//! those uids, which is read from in-memory indexes (accounts, Secrets and
//! Nodes here, pods in the Node authorizer's graph), never from the store.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::feed::{Objects, Versioned};
use super::node::NodeGraph;
use super::user::{UserInfo, service_account_user};
use crate::api::status::{ApiError, FieldError};

/// The issuer and the API server's own audience, Kubernetes' defaults.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The key file beside the cluster CA.
pub const KEY_FILE: &str = "sa.key";
/// Kubernetes' default token lifetime for TokenRequest.
const EXPIRATION_SECONDS_DEFAULT: i64 = 3_600;
/// Kubernetes refuses shorter lifetimes.
const EXPIRATION_SECONDS_MIN: i64 = 600;
/// A year: longer-lived credentials are what bound tokens replace.
const EXPIRATION_SECONDS_MAX: i64 = 365 * 24 * 3_600;
/// Audiences one token may name, and the length of each.
const AUDIENCES_MAX: usize = 16;
const AUDIENCE_BYTES_MAX: usize = 256;
/// The longest name of a bound object (a DNS subdomain).
const BOUND_NAME_MAX: usize = 253;
/// Longest token accepted for checking: a signed JWT of our claims is
/// well under 2 KiB.
const TOKEN_BYTES_MAX: usize = 8 * 1024;

const SERVICE_ACCOUNTS: &str = "/registry/serviceaccounts/";
const SECRETS: &str = "/registry/secrets/";
const NODES: &str = "/registry/nodes/";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the service account key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("signing the token: {0}")]
    Sign(String),
}

/// Who a token names, as Kubernetes' `kubernetes.io` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// The servers' signing key: signs tokens and checks them.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The key's PEM, handed to servers that join.
    pem: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// The key in `dir` (created, 0600, when there is none).
    pub fn ensure(dir: &Path) -> Result<Signer, TokenError> {
        let path = dir.join(KEY_FILE);
        let failed = |reason: String| TokenError::Key {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(pem) => Signer::from_pem(&pem).map_err(|error| failed(error.to_string())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate().map_err(|e| failed(e.to_string()))?;
                let pem = key.serialize_pem();
                write_private(&path, &pem).map_err(|e| failed(e.to_string()))?;
                Signer::from_pem(&pem)
            }
            Err(error) => Err(failed(error.to_string())),
        }
    }

    /// Writes `pem` (from a server that admitted this one) into `dir`.
    pub fn save(dir: &Path, pem: &str) -> Result<(), TokenError> {
        let path = dir.join(KEY_FILE);
        Signer::from_pem(pem)?;
        write_private(&path, pem).map_err(|error| TokenError::Key {
            path: path.display().to_string(),
            reason: error.to_string(),
        })
    }

    pub fn from_pem(pem: &str) -> Result<Signer, TokenError> {
        let key = rcgen::KeyPair::from_pem(pem).map_err(|error| TokenError::Key {
            path: KEY_FILE.into(),
            reason: error.to_string(),
        })?;
        Ok(Signer {
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            decoding: DecodingKey::from_ec_der(key.public_key_raw()),
            pem: pem.to_string(),
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &self.encoding)
            .map_err(|error| TokenError::Sign(error.to_string()))
    }

    /// The claims of `token` if its signature, issuer, lifetime and
    /// audience (the API's) hold; why not otherwise.
    fn verify(&self, token: &str) -> Result<Claims, String> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|error| error.to_string())
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// What a token may name besides a Pod: its ServiceAccount, or the Secret
/// or Node it is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Referent {
    ServiceAccount,
    Secret,
    Node,
}

impl Referent {
    fn prefix(self) -> &'static str {
        match self {
            Referent::ServiceAccount => SERVICE_ACCOUNTS,
            Referent::Secret => SECRETS,
            Referent::Node => NODES,
        }
    }
}

/// ServiceAccounts and Secrets by namespace and name, Nodes by name (the
/// namespace empty), with their uids.
#[derive(Default)]
pub struct ObjectUids {
    uids: HashMap<(Referent, String, String), String>,
}

pub type Accounts = Versioned<ObjectUids>;

impl Accounts {
    fn uid(&self, referent: Referent, namespace: &str, name: &str) -> Option<String> {
        self.read()
            .uids
            .get(&(referent, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Whether `object` (as a token names it) still exists with its uid.
    fn holds(&self, referent: Referent, namespace: &str, object: &ObjectRef) -> bool {
        self.uid(referent, namespace, &object.name).as_deref() == Some(object.uid.as_str())
    }
}

fn object_key(key: &[u8]) -> Option<(Referent, String, String)> {
    let key = std::str::from_utf8(key).ok()?;
    [Referent::ServiceAccount, Referent::Secret, Referent::Node]
        .into_iter()
        .find_map(|referent| {
            let rest = key.strip_prefix(referent.prefix())?;
            let (namespace, name) = match referent {
                Referent::Node => ("", rest),
                _ => rest.split_once('/')?,
            };
            Some((referent, namespace.to_string(), name.to_string()))
        })
}

fn uid_of(value: &[u8]) -> Option<String> {
    let object: Value = serde_json::from_slice(value).ok()?;
    object["metadata"]["uid"].as_str().map(str::to_string)
}

impl Objects for ObjectUids {
    const PREFIXES: &'static [&'static str] = &[SERVICE_ACCOUNTS, SECRETS, NODES];

    fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Some(id) = object_key(key) else { return };
        match value.and_then(uid_of) {
            Some(uid) => self.uids.insert(id, uid),
            None => self.uids.remove(&id),
        };
    }
}

/// Issues and checks tokens.
pub struct Tokens {
    pub signer: Signer,
    pub accounts: Arc<Accounts>,
}

impl Tokens {
    /// The user `token` authenticates, if it does: valid as a JWT of ours
    /// and naming objects that still exist.
    pub fn authenticate(&self, token: &str, graph: &NodeGraph) -> Result<UserInfo, ApiError> {
        let refuse = |why: &str| {
            tracing::debug!(%why, "a bearer token was refused");
            ApiError::unauthorized()
        };
        if token.len() > TOKEN_BYTES_MAX {
            return Err(refuse("too long"));
        }
        let claims = self.signer.verify(token).map_err(|why| refuse(&why))?;
        let k8s = &claims.kubernetes;
        if claims.sub != service_account_user(&k8s.namespace, &k8s.serviceaccount.name) {
            return Err(refuse("the subject is not the service account"));
        }
        let accounts = &self.accounts;
        if !accounts.holds(
            Referent::ServiceAccount,
            &k8s.namespace,
            &k8s.serviceaccount,
        ) {
            return Err(refuse("the service account is gone"));
        }
        if let Some(secret) = &k8s.secret
            && !accounts.holds(Referent::Secret, &k8s.namespace, secret)
        {
            return Err(refuse("the secret it is bound to is gone"));
        }
        if let Some(node) = &k8s.node
            && !accounts.holds(Referent::Node, "", node)
        {
            return Err(refuse("the node it is bound to is gone"));
        }
        let mut user = UserInfo::service_account(&k8s.namespace, &k8s.serviceaccount.name);
        user.uid = k8s.serviceaccount.uid.clone();
        if let Some(pod) = &k8s.pod {
            if graph.pod_uid(&k8s.namespace, &pod.name).as_deref() != Some(pod.uid.as_str()) {
                return Err(refuse("the pod it is bound to is gone"));
            }
            let extra = &mut user.extra;
            extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![pod.name.clone()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                vec![pod.uid.clone()],
            );
        }
        if let Some(node) = &k8s.node {
            let extra = &mut user.extra;
            extra.insert(
                "authentication.kubernetes.io/node-name".into(),
                vec![node.name.clone()],
            );
            extra.insert(
                "authentication.kubernetes.io/node-uid".into(),
                vec![node.uid.clone()],
            );
        }
        user.extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={}", claims.jti)],
        );
        Ok(user)
    }
}

/// What a TokenRequest asks for, checked.
pub struct Request {
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    /// The object the token is bound to, if any.
    pub bound: Option<Binding>,
}

/// The object a token is bound to, as the request names it.
pub struct Binding {
    pub kind: BoundKind,
    pub name: String,
    /// The uid the requester expects it to have, if it said.
    pub uid: Option<String>,
}

/// What a token can be bound to, as Kubernetes allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundKind {
    Pod,
    Secret,
    Node,
}

/// Reads and checks a TokenRequest's spec, as Kubernetes validates it.
pub fn parse_request(name: &str, body: &Value) -> Result<Request, ApiError> {
    let spec = &body["spec"];
    let invalid = |field: &str, message: String| {
        let info = crate::resources::registry().find("", "v1", "serviceaccounts");
        let error = FieldError::invalid(field, message);
        match info {
            Some(info) => ApiError::invalid(info, name, vec![error]),
            None => ApiError::bad_request(error.message),
        }
    };
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        None => vec![ISSUER.to_string()],
        Some(given) if given.is_empty() => vec![ISSUER.to_string()],
        Some(given) => given
            .iter()
            .map(|audience| audience.as_str().unwrap_or_default().to_string())
            .collect(),
    };
    if audiences.len() > AUDIENCES_MAX
        || audiences
            .iter()
            .any(|a| a.is_empty() || a.len() > AUDIENCE_BYTES_MAX)
    {
        return Err(invalid(
            "spec.audiences",
            format!("at most {AUDIENCES_MAX} audiences of 1 to {AUDIENCE_BYTES_MAX} bytes each"),
        ));
    }
    let expiration_seconds = spec["expirationSeconds"]
        .as_i64()
        .unwrap_or(EXPIRATION_SECONDS_DEFAULT);
    if expiration_seconds < EXPIRATION_SECONDS_MIN {
        return Err(invalid(
            "spec.expirationSeconds",
            "may not specify a duration less than 10 minutes".into(),
        ));
    }
    if expiration_seconds > EXPIRATION_SECONDS_MAX {
        return Err(invalid(
            "spec.expirationSeconds",
            "may not specify a duration longer than a year (8760h)".into(),
        ));
    }
    let reference = &spec["boundObjectRef"];
    let bound = if reference.is_null() {
        None
    } else {
        let kind = match reference["kind"].as_str() {
            Some("Pod") => BoundKind::Pod,
            Some("Secret") => BoundKind::Secret,
            Some("Node") => BoundKind::Node,
            other => {
                return Err(invalid(
                    "spec.boundObjectRef.kind",
                    format!("{other:?}: supported values: \"Pod\", \"Secret\", \"Node\""),
                ));
            }
        };
        match reference["apiVersion"].as_str() {
            None | Some("v1") => {}
            Some(other) => {
                return Err(invalid(
                    "spec.boundObjectRef.apiVersion",
                    format!("{other:?}: supported values: \"v1\""),
                ));
            }
        }
        let name = reference["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err(invalid("spec.boundObjectRef.name", "Required value".into()));
        }
        if name.len() > BOUND_NAME_MAX {
            return Err(invalid(
                "spec.boundObjectRef.name",
                "must be no more than 253 characters".into(),
            ));
        }
        let uid = reference["uid"].as_str().filter(|uid| !uid.is_empty());
        Some(Binding {
            kind,
            name: name.to_string(),
            uid: uid.map(str::to_string),
        })
    };
    Ok(Request {
        audiences,
        expiration_seconds,
        bound,
    })
}

/// The claims of a token for `account` (its namespace, name and uid).
pub fn claims(
    namespace: &str,
    account: ObjectRef,
    bound: Option<(BoundKind, ObjectRef)>,
    request: &Request,
    now: i64,
) -> Claims {
    let sub = service_account_user(namespace, &account.name);
    let mut kubernetes = KubernetesClaims {
        namespace: namespace.to_string(),
        serviceaccount: account,
        pod: None,
        secret: None,
        node: None,
    };
    match bound {
        Some((BoundKind::Pod, object)) => kubernetes.pod = Some(object),
        Some((BoundKind::Secret, object)) => kubernetes.secret = Some(object),
        Some((BoundKind::Node, object)) => kubernetes.node = Some(object),
        None => {}
    }
    Claims {
        iss: ISSUER.to_string(),
        sub,
        aud: request.audiences.clone(),
        exp: now + request.expiration_seconds,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes,
    }
}

/// The TokenRequest answered with `token`.
pub fn answer(mut body: Value, request: &Request, token: String, expires: String) -> Value {
    body["apiVersion"] = json!("authentication.k8s.io/v1");
    body["kind"] = json!("TokenRequest");
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    body["spec"]["audiences"] = json!(request.audiences);
    body["spec"]["expirationSeconds"] = json!(request.expiration_seconds);
    body["status"] = json!({"token": token, "expirationTimestamp": expires});
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::feed::Table;

    fn new_signer() -> Signer {
        let key = rcgen::KeyPair::generate().expect("key");
        Signer::from_pem(&key.serialize_pem()).expect("signer")
    }

    fn request(audiences: &[&str], seconds: i64) -> Request {
        Request {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: seconds,
            bound: None,
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
    }

    fn account() -> ObjectRef {
        ObjectRef {
            name: "ci".into(),
            uid: "u1".into(),
        }
    }

    #[test]
    fn tokens_check_signature_audience_and_lifetime() {
        let signer = new_signer();
        let good = claims("a", account(), None, &request(&[ISSUER], 600), now());
        let token = signer.sign(&good).expect("sign");
        assert_eq!(signer.verify(&token).expect("valid"), good);
        let elsewhere = claims("a", account(), None, &request(&["vault"], 600), now());
        assert!(
            signer
                .verify(&signer.sign(&elsewhere).expect("sign"))
                .is_err()
        );
        let expired = claims("a", account(), None, &request(&[ISSUER], 600), now() - 700);
        assert!(
            signer
                .verify(&signer.sign(&expired).expect("sign"))
                .is_err()
        );
        assert!(
            new_signer().verify(&token).is_err(),
            "another key's signature"
        );
        let mut tampered = token.clone();
        tampered.replace_range(token.len() - 4.., "AAAA");
        assert!(signer.verify(&tampered).is_err());
    }

    #[test]
    fn tokens_name_live_objects() {
        let tokens = Tokens {
            signer: new_signer(),
            accounts: Accounts::new(),
        };
        let graph = NodeGraph::default();
        let token = tokens
            .signer
            .sign(&claims(
                "a",
                account(),
                None,
                &request(&[ISSUER], 600),
                now(),
            ))
            .expect("sign");
        assert!(
            tokens.authenticate(&token, &graph).is_err(),
            "no such account"
        );
        let account_json = serde_json::to_vec(&json!({"metadata": {"uid": "u1"}})).expect("json");
        tokens
            .accounts
            .apply(b"/registry/serviceaccounts/a/ci", Some(&account_json), 1);
        let user = tokens.authenticate(&token, &graph).expect("authenticates");
        assert_eq!(user.name, "system:serviceaccount:a:ci");
        assert!(user.in_group("system:serviceaccounts:a"));
        // Recreated under the same name, it is another account.
        let again = serde_json::to_vec(&json!({"metadata": {"uid": "u2"}})).expect("json");
        tokens
            .accounts
            .apply(b"/registry/serviceaccounts/a/ci", Some(&again), 2);
        assert!(tokens.authenticate(&token, &graph).is_err());
        tokens
            .accounts
            .apply(b"/registry/serviceaccounts/a/ci", Some(&account_json), 3);

        // Bound to a Secret, then to a Node: valid while each exists with
        // the uid it had.
        let object =
            |uid: &str| serde_json::to_vec(&json!({"metadata": {"uid": uid}})).expect("json");
        let bound = |kind, name: &str| {
            let reference = ObjectRef {
                name: name.into(),
                uid: "b1".into(),
            };
            let claims = claims(
                "a",
                account(),
                Some((kind, reference)),
                &request(&[ISSUER], 600),
                now(),
            );
            tokens.signer.sign(&claims).expect("sign")
        };
        let to_secret = bound(BoundKind::Secret, "creds");
        assert!(
            tokens.authenticate(&to_secret, &graph).is_err(),
            "no such secret"
        );
        tokens
            .accounts
            .apply(b"/registry/secrets/a/creds", Some(&object("b1")), 4);
        tokens
            .authenticate(&to_secret, &graph)
            .expect("the secret exists");
        tokens.accounts.apply(b"/registry/secrets/a/creds", None, 5);
        assert!(
            tokens.authenticate(&to_secret, &graph).is_err(),
            "secret deleted"
        );
        let to_node = bound(BoundKind::Node, "n1");
        tokens
            .accounts
            .apply(b"/registry/nodes/n1", Some(&object("b2")), 6);
        assert!(
            tokens.authenticate(&to_node, &graph).is_err(),
            "another node uid"
        );
        tokens
            .accounts
            .apply(b"/registry/nodes/n1", Some(&object("b1")), 7);
        let user = tokens
            .authenticate(&to_node, &graph)
            .expect("the node exists");
        assert_eq!(
            user.extra.get("authentication.kubernetes.io/node-name"),
            Some(&vec!["n1".to_string()])
        );
    }

    #[test]
    fn requests_are_bounded() {
        let body = |spec: Value| json!({"spec": spec});
        assert!(parse_request("ci", &body(json!({"expirationSeconds": 60}))).is_err());
        assert!(parse_request("ci", &body(json!({"expirationSeconds": 40_000_000}))).is_err());
        let defaults = parse_request("ci", &body(json!({}))).expect("defaults");
        assert_eq!(defaults.audiences, [ISSUER]);
        assert_eq!(defaults.expiration_seconds, 3_600);
        let bound =
            |reference: Value| parse_request("ci", &body(json!({"boundObjectRef": reference})));
        let secret = bound(json!({"kind": "Secret", "name": "s"})).expect("a secret binds");
        assert!(
            secret
                .bound
                .is_some_and(|b| b.kind == BoundKind::Secret && b.name == "s")
        );
        assert!(bound(json!({"kind": "ConfigMap", "name": "c"})).is_err());
        assert!(bound(json!({"kind": "Node", "apiVersion": "v2", "name": "n"})).is_err());
        assert!(bound(json!({"kind": "Pod"})).is_err(), "no name");
        assert!(bound(json!({"kind": "Pod", "name": "p".repeat(254)})).is_err());
    }
}
