//! Kinds as users name them (`deploy`, `pods`, `Deployment`,
//! `deployments.apps`) and as manifests name them (`apiVersion` and
//! `kind`), resolved against what the server says it serves through
//! discovery. kube-rs's `Discovery` leaves out short and singular names,
//! so the resource lists are read here with its lower-level calls.
//!
//! It knows discovery documents; it does not know what any kind means.

use anyhow::{Context, Result, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIResource, APIResourceList};
use kube::api::Api;
use kube::core::{ApiResource, DynamicObject};

/// One served resource at one group version.
#[derive(Debug, Clone)]
pub struct Resource {
    pub api: ApiResource,
    pub namespaced: bool,
    pub singular: String,
    pub short_names: Vec<String>,
    /// Groups of kinds a name can stand for (`all`).
    pub categories: Vec<String>,
    /// Whether this is the group's preferred version, which is the one a
    /// bare name (`get deploy`) means.
    pub preferred: bool,
}

impl Resource {
    /// The name kubectl prints objects under: `deployment.apps`,
    /// `service` (the core group has no suffix).
    pub fn display(&self) -> String {
        let kind = self.api.kind.to_lowercase();
        if self.api.group.is_empty() {
            kind
        } else {
            format!("{kind}.{}", self.api.group)
        }
    }

    /// `deployment.apps/web`, as `-o name` and the verbs' reports print it.
    pub fn object_name(&self, name: &str) -> String {
        format!("{}/{name}", self.display())
    }

    /// The API for this resource in `namespace`; every namespace when
    /// `namespace` is `None`, and cluster-scoped resources ignore it.
    pub fn api(&self, client: &kube::Client, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(namespace) if self.namespaced => {
                Api::namespaced_with(client.clone(), namespace, &self.api)
            }
            _ => Api::all_with(client.clone(), &self.api),
        }
    }

    /// The collection's URL path, for requests kube-rs has no call for
    /// (Tables).
    pub fn url_path(&self, namespace: Option<&str>) -> String {
        let namespace = if self.namespaced { namespace } else { None };
        <DynamicObject as kube::Resource>::url_path(&self.api, namespace)
    }

    fn answers_to(&self, word: &str) -> bool {
        self.api.plural == word
            || self.singular == word
            || self.short_names.iter().any(|short| short == word)
            || self.api.kind.eq_ignore_ascii_case(word)
    }
}

/// Everything the server serves, read once per command.
pub struct Catalog {
    resources: Vec<Resource>,
}

impl Catalog {
    /// Reads `/api`, `/apis` and every group version's resource list.
    pub async fn discover(client: &kube::Client) -> Result<Catalog> {
        let mut resources = Vec::new();
        let core = client
            .list_core_api_versions()
            .await
            .context("discovering the API (/api)")?;
        for (index, version) in core.versions.iter().enumerate() {
            let list = client
                .list_core_api_resources(version)
                .await
                .with_context(|| format!("discovering the API (/api/{version})"))?;
            add(&mut resources, &list, index == 0);
        }
        let groups = client
            .list_api_groups()
            .await
            .context("discovering the API (/apis)")?;
        for group in groups.groups {
            let preferred = group
                .preferred_version
                .as_ref()
                .map(|version| version.group_version.clone());
            for (index, version) in group.versions.iter().enumerate() {
                let list = client
                    .list_api_group_resources(&version.group_version)
                    .await
                    .with_context(|| {
                        format!("discovering the API (/apis/{})", version.group_version)
                    })?;
                // Without a preference, the first listed version is it.
                let is_preferred = preferred
                    .as_deref()
                    .map_or(index == 0, |preferred| preferred == version.group_version);
                add(&mut resources, &list, is_preferred);
            }
        }
        // Preferred versions first, so a bare name resolves to them; the
        // core group stays ahead of others (`events` is core's first).
        resources.sort_by_key(|resource| !resource.preferred);
        Ok(Catalog { resources })
    }

    /// A resource by the name a user typed: plural, singular, kind or short
    /// name, optionally qualified by group (`deployments.apps`) or by
    /// version and group (`deployments.v1.apps`).
    pub fn resolve(&self, typed: &str) -> Result<&Resource> {
        let word = typed.to_lowercase();
        let (name, qualifier) = match word.split_once('.') {
            Some((name, qualifier)) => (name, Some(qualifier)),
            None => (word.as_str(), None),
        };
        let found = self.resources.iter().find(|resource| {
            resource.answers_to(name)
                && match qualifier {
                    None => true,
                    Some(qualifier) => {
                        let version_group =
                            format!("{}.{}", resource.api.version, resource.api.group);
                        qualifier == resource.api.group || qualifier == version_group
                    }
                }
        });
        match found {
            Some(resource) => Ok(resource),
            None => bail!(
                "unknown kind \"{typed}\": the server serves no resource of that plural, \
                 singular, kind or short name (`kubectl api-resources` lists them)"
            ),
        }
    }

    /// The resources a name stands for: the one it names, else every
    /// preferred resource in the category of that name (`all`), as
    /// `kubectl get all` reads it.
    pub fn resolve_many(&self, typed: &str) -> Result<Vec<&Resource>> {
        let named = self.resolve(typed);
        if named.is_ok() {
            return named.map(|resource| vec![resource]);
        }
        let in_category: Vec<&Resource> = self
            .resources
            .iter()
            .filter(|resource| resource.preferred && resource.categories.iter().any(|c| c == typed))
            .collect();
        if in_category.is_empty() {
            return named.map(|resource| vec![resource]);
        }
        Ok(in_category)
    }

    /// The resource a manifest's `apiVersion` and `kind` name.
    pub fn for_kind(&self, api_version: &str, kind: &str) -> Result<&Resource> {
        let found = self
            .resources
            .iter()
            .find(|resource| resource.api.api_version == api_version && resource.api.kind == kind);
        match found {
            Some(resource) => Ok(resource),
            None => {
                bail!("unknown kind \"{kind}\" in \"{api_version}\": the server does not serve it")
            }
        }
    }
}

/// What a verb's words name: `KIND[,KIND…] [NAME…]`, or `KIND/NAME…`.
/// Returns each typed kind with the names asked of it (none: all).
pub fn targets(words: &[String]) -> Result<Vec<(String, Vec<String>)>> {
    let Some(first) = words.first() else {
        bail!("name a kind (`pods`, `deploy`, …), or KIND/NAME");
    };
    if first.contains('/') {
        let mut targets: Vec<(String, Vec<String>)> = Vec::new();
        for word in words {
            let Some((kind, name)) = word
                .split_once('/')
                .filter(|(k, n)| !k.is_empty() && !n.is_empty())
            else {
                bail!("\"{word}\" is not KIND/NAME; name every object the same way");
            };
            match targets.last_mut() {
                Some((last, names)) if last == kind => names.push(name.to_owned()),
                _ => targets.push((kind.to_owned(), vec![name.to_owned()])),
            }
        }
        return Ok(targets);
    }
    let names = words[1..].to_vec();
    let kinds: Vec<&str> = first.split(',').filter(|kind| !kind.is_empty()).collect();
    if kinds.len() > 1 && !names.is_empty() {
        bail!("names go with one kind; to name objects of several kinds use KIND/NAME");
    }
    Ok(kinds
        .into_iter()
        .map(|kind| (kind.to_owned(), names.clone()))
        .collect())
}

fn add(resources: &mut Vec<Resource>, list: &APIResourceList, preferred: bool) {
    let (group, version) = match list.group_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", list.group_version.as_str()),
    };
    // `deployments/scale` and the like are subresources, not kinds.
    let kinds = list
        .resources
        .iter()
        .filter(|entry| !entry.name.contains('/'));
    resources.extend(kinds.map(|entry| resource(entry, group, version, preferred)));
}

fn resource(entry: &APIResource, group: &str, version: &str, preferred: bool) -> Resource {
    let gvk = kube::core::GroupVersionKind::gvk(group, version, &entry.kind);
    let singular = if entry.singular_name.is_empty() {
        entry.kind.to_lowercase()
    } else {
        entry.singular_name.clone()
    };
    Resource {
        api: ApiResource::from_gvk_with_plural(&gvk, &entry.name),
        namespaced: entry.namespaced,
        singular,
        short_names: entry.short_names.clone().unwrap_or_default(),
        categories: entry.categories.clone().unwrap_or_default(),
        preferred,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let entry = |name: &str, kind: &str, short: &[&str]| APIResource {
            name: name.into(),
            kind: kind.into(),
            namespaced: true,
            short_names: Some(short.iter().map(|s| s.to_string()).collect()),
            ..APIResource::default()
        };
        let mut resources = Vec::new();
        let core = APIResourceList {
            group_version: "v1".into(),
            resources: vec![entry("pods", "Pod", &["po"]), entry("pods/log", "Pod", &[])],
        };
        let deployments = APIResource {
            categories: Some(vec!["all".into()]),
            ..entry("deployments", "Deployment", &["deploy"])
        };
        let apps = APIResourceList {
            group_version: "apps/v1".into(),
            resources: vec![deployments],
        };
        add(&mut resources, &core, true);
        add(&mut resources, &apps, true);
        Catalog { resources }
    }

    #[test]
    fn names_resolve_by_plural_singular_kind_short_name_and_group() {
        let catalog = catalog();
        for typed in [
            "deploy",
            "deployment",
            "deployments",
            "Deployment",
            "deployments.apps",
            "deployment.v1.apps",
        ] {
            let resource = catalog.resolve(typed).unwrap();
            assert_eq!(resource.display(), "deployment.apps", "{typed}");
        }
        assert_eq!(catalog.resolve("po").unwrap().object_name("x"), "pod/x");
        assert!(catalog.resolve("pods.apps").is_err());
        let error = catalog.resolve("flurb").unwrap_err().to_string();
        assert!(error.contains("unknown kind \"flurb\""), "{error}");
        assert_eq!(catalog.resources.len(), 2, "subresources are not kinds");
        let all: Vec<String> = catalog
            .resolve_many("all")
            .unwrap()
            .iter()
            .map(|r| r.display())
            .collect();
        assert_eq!(all, ["deployment.apps"]);
        assert!(catalog.resolve_many("flurb").is_err());
    }

    #[test]
    fn words_name_kinds_and_objects() {
        let words = |text: &str| -> Vec<String> { text.split(' ').map(String::from).collect() };
        let pairs = |text: &str| targets(&words(text)).unwrap();
        assert_eq!(
            pairs("po a b"),
            [("po".to_owned(), vec!["a".to_owned(), "b".to_owned()])]
        );
        assert_eq!(pairs("deploy,svc").len(), 2);
        assert_eq!(
            pairs("deploy/a deploy/b svc/c"),
            [
                ("deploy".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
                ("svc".to_owned(), vec!["c".to_owned()]),
            ]
        );
        assert!(targets(&words("deploy/a b")).is_err());
        assert!(targets(&words("deploy,svc a")).is_err());
    }

    #[test]
    fn manifests_resolve_by_api_version_and_kind() {
        let catalog = catalog();
        assert_eq!(
            catalog
                .for_kind("apps/v1", "Deployment")
                .unwrap()
                .api
                .plural,
            "deployments"
        );
        assert!(catalog.for_kind("apps/v2", "Deployment").is_err());
    }
}
