//! `kubectl --as USER --as-group GROUP`: a request made as someone else,
//! by a caller allowed to `impersonate` that user, each of those groups,
//! uid and extra values, as Kubernetes checks them.

use axum::http::HeaderMap;

use super::Authorizer;
use super::attributes::{Attributes, ResourceAttributes};
use super::user::{ANONYMOUS, AUTHENTICATED, SERVICE_ACCOUNTS, UNAUTHENTICATED, UserInfo};
use crate::api::status::ApiError;

const USER_HEADER: &str = "impersonate-user";
const GROUP_HEADER: &str = "impersonate-group";
const UID_HEADER: &str = "impersonate-uid";
const EXTRA_PREFIX: &str = "impersonate-extra-";
/// Groups and extra values one request may name; a user in more groups
/// than this is not one a person types on a command line.
const VALUES_MAX: usize = 64;

/// Whether a request asks to act as another user.
pub fn requested(headers: &HeaderMap) -> bool {
    headers.contains_key(USER_HEADER)
}

/// The user a request acts as: `requester`, or whom it impersonates.
pub fn resolve(
    authorizer: &Authorizer,
    requester: UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let text = |value: &axum::http::HeaderValue| value.to_str().ok().map(str::to_string);
    let name = headers.get(USER_HEADER).and_then(text);
    let groups: Vec<String> = headers
        .get_all(GROUP_HEADER)
        .iter()
        .filter_map(text)
        .collect();
    let uid = headers.get(UID_HEADER).and_then(text);
    let mut extra = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (header, value) in headers {
        if let Some(key) = header.as_str().strip_prefix(EXTRA_PREFIX)
            && let Some(value) = text(value)
        {
            extra.entry(key.to_string()).or_default().push(value);
        }
    }
    let Some(name) = name else {
        if groups.is_empty() && uid.is_none() && extra.is_empty() {
            return Ok(requester);
        }
        return Err(ApiError::bad_request(
            "requested impersonation of groups, a uid or extra values without impersonating a user",
        ));
    };
    if groups.len() > VALUES_MAX || extra.values().map(Vec::len).sum::<usize>() > VALUES_MAX {
        return Err(ApiError::bad_request(format!(
            "at most {VALUES_MAX} groups and {VALUES_MAX} extra values may be impersonated"
        )));
    }
    let mut checks = vec![user_check(&name)];
    checks.extend(groups.iter().map(|group| check("", "groups", "", group)));
    if let Some(uid) = &uid {
        checks.push(check("authentication.k8s.io", "uids", "", uid));
    }
    for (key, values) in &extra {
        for value in values {
            checks.push(check("authentication.k8s.io", "userextras", key, value));
        }
    }
    for request in &checks {
        authorizer.check(&requester, request)?;
    }
    Ok(impersonated(name, groups, uid, extra))
}

fn user_check(name: &str) -> Attributes {
    let probe = UserInfo::authenticated(name, Vec::new());
    match probe.service_account_of() {
        Some((namespace, account)) => Attributes::Resource(ResourceAttributes {
            verb: "impersonate".into(),
            resource: "serviceaccounts".into(),
            namespace: namespace.into(),
            name: account.into(),
            ..ResourceAttributes::default()
        }),
        None => check("", "users", "", name),
    }
}

fn check(group: &str, resource: &str, subresource: &str, name: &str) -> Attributes {
    Attributes::Resource(ResourceAttributes {
        verb: "impersonate".into(),
        group: group.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        name: name.into(),
        ..ResourceAttributes::default()
    })
}

/// The impersonated user, with the groups Kubernetes adds.
fn impersonated(
    name: String,
    mut groups: Vec<String>,
    uid: Option<String>,
    extra: std::collections::BTreeMap<String, Vec<String>>,
) -> UserInfo {
    let mut user = UserInfo::authenticated(name, Vec::new());
    if groups.is_empty()
        && let Some((namespace, _)) = user.service_account_of()
    {
        groups = vec![
            SERVICE_ACCOUNTS.to_string(),
            format!("{SERVICE_ACCOUNTS}:{namespace}"),
        ];
    }
    let anonymous = user.name == ANONYMOUS || groups.iter().any(|g| g == UNAUTHENTICATED);
    if !anonymous && !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.to_string());
    }
    user.groups = groups;
    user.uid = uid.unwrap_or_default();
    user.extra = extra;
    user
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_accounts_get_their_groups() {
        let user = impersonated(
            "system:serviceaccount:a:ci".into(),
            Vec::new(),
            None,
            Default::default(),
        );
        assert_eq!(
            user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:a",
                AUTHENTICATED
            ]
        );
        let anonymous = impersonated(ANONYMOUS.into(), Vec::new(), None, Default::default());
        assert!(!anonymous.in_group(AUTHENTICATED));
    }

    #[test]
    fn impersonation_needs_the_verb() {
        let authorizer = Authorizer::new();
        let mut headers = HeaderMap::new();
        headers.insert(USER_HEADER, "bob".parse().expect("header"));
        let alice = UserInfo::authenticated("alice", vec![]);
        let refused = resolve(&authorizer, alice, &headers).expect_err("not allowed");
        assert_eq!(
            refused.message,
            "users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
        let mut admin = UserInfo::loopback_admin();
        headers.append(GROUP_HEADER, "team-a".parse().expect("header"));
        admin = resolve(&authorizer, admin, &headers).expect("superuser");
        assert_eq!(admin.name, "bob");
        assert_eq!(admin.groups, ["team-a", AUTHENTICATED]);
        let no_user = {
            let mut headers = HeaderMap::new();
            headers.insert(GROUP_HEADER, "x".parse().expect("header"));
            headers
        };
        assert!(resolve(&authorizer, UserInfo::loopback_admin(), &no_user).is_err());
    }
}
