//! The files `flotilla up` keeps outside the cluster: where its data
//! directory is, and the user's own kubeconfig, into which
//! `--write-kubeconfig` merges the cluster.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kube::config::Kubeconfig;

/// The data directory: `flag`, else `$XDG_DATA_HOME/flotilla`, else
/// `~/.local/share/flotilla`; created, and made absolute so that the
/// printed `export KUBECONFIG=…` works from any directory.
pub fn data_dir(flag: Option<&Path>) -> Result<PathBuf> {
    let dir = match flag {
        Some(dir) => dir.to_path_buf(),
        None => default_data_dir()?,
    };
    // Private: it holds the cluster CA's key and the admin's kubeconfig.
    flotilla_pki::create_private_dir(&dir)?;
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

fn default_data_dir() -> Result<PathBuf> {
    // The XDG base directory spec: a relative $XDG_DATA_HOME is ignored.
    if let Some(data_home) = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from)
        && data_home.is_absolute()
    {
        return Ok(data_home.join("flotilla"));
    }
    Ok(home()?.join(".local/share/flotilla"))
}

fn home() -> Result<PathBuf> {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home)),
        _ => bail!("$HOME is not set; pass --data-dir"),
    }
}

/// Merges the kubeconfig at `ours` into `~/.kube/config` (created when
/// missing) and returns that file's path.
pub fn merge_into_user_kubeconfig(ours: &Path) -> Result<PathBuf> {
    let kube_dir = home()?.join(".kube");
    let path = kube_dir.join("config");
    let ours = Kubeconfig::read_from(ours)
        .with_context(|| format!("reading the kubeconfig {}", ours.display()))?;
    let theirs = if path.exists() {
        Kubeconfig::read_from(&path)
            .with_context(|| format!("reading the kubeconfig {}", path.display()))?
    } else {
        Kubeconfig {
            api_version: Some("v1".into()),
            kind: Some("Config".into()),
            ..Kubeconfig::default()
        }
    };
    let merged = serde_yaml::to_string(&merge(theirs, ours)).context("encoding the kubeconfig")?;
    std::fs::create_dir_all(&kube_dir)
        .with_context(|| format!("creating {}", kube_dir.display()))?;
    // Beside, then renamed: an interrupted write leaves the old file whole.
    let staged = kube_dir.join("config.flotilla-new");
    crate::write_private(&staged, &merged)?;
    std::fs::rename(&staged, &path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(path)
}

/// `theirs` with `ours`' clusters, users and contexts in place of those
/// of the same names, and `ours`' context current. Our users are renamed
/// `flotilla-<name>`, as `admin` is a common name in other clusters'
/// entries that must not be replaced.
fn merge(mut theirs: Kubeconfig, mut ours: Kubeconfig) -> Kubeconfig {
    let renamed = |name: &str| format!("flotilla-{name}");
    for user in &mut ours.auth_infos {
        user.name = renamed(&user.name);
    }
    for context in ours.contexts.iter_mut().filter_map(|c| c.context.as_mut()) {
        context.user = context.user.as_deref().map(renamed);
    }
    for cluster in ours.clusters {
        theirs.clusters.retain(|c| c.name != cluster.name);
        theirs.clusters.push(cluster);
    }
    for user in ours.auth_infos {
        theirs.auth_infos.retain(|u| u.name != user.name);
        theirs.auth_infos.push(user);
    }
    for context in ours.contexts {
        theirs.contexts.retain(|c| c.name != context.name);
        theirs.contexts.push(context);
    }
    theirs.current_context = ours.current_context;
    theirs
}

/// `path` as one shell word.
pub fn shell_quoted(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn kubeconfig(yaml: &str) -> Kubeconfig {
        Kubeconfig::from_yaml(yaml).unwrap()
    }

    #[test]
    fn merging_replaces_our_entries_and_keeps_the_others() {
        let theirs = kubeconfig(
            "apiVersion: v1
kind: Config
clusters:
- {name: prod, cluster: {server: 'https://prod:6443'}}
- {name: flotilla, cluster: {server: 'https://127.0.0.1:1'}}
users:
- {name: admin, user: {token: secret}}
contexts:
- {name: prod, context: {cluster: prod, user: admin}}
current-context: prod
",
        );
        let ours = kubeconfig(&flotilla_control::kubeconfig("https://127.0.0.1:6443"));
        let merged = merge(theirs, ours);
        let names = |names: Vec<&str>| names.join(",");
        assert_eq!(
            names(merged.clusters.iter().map(|c| c.name.as_str()).collect()),
            "prod,flotilla"
        );
        let flotilla = merged.clusters.iter().find(|c| c.name == "flotilla");
        let server = flotilla.and_then(|c| c.cluster.as_ref()?.server.clone());
        assert_eq!(server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            names(merged.auth_infos.iter().map(|u| u.name.as_str()).collect()),
            "admin,flotilla-admin"
        );
        let context = merged.contexts.iter().find(|c| c.name == "flotilla");
        let user = context.and_then(|c| c.context.as_ref()?.user.clone());
        assert_eq!(user.as_deref(), Some("flotilla-admin"));
        assert_eq!(merged.current_context.as_deref(), Some("flotilla"));
    }

    #[test]
    fn paths_become_one_shell_word() {
        assert_eq!(
            shell_quoted(Path::new("/home/a/.local/x")),
            "/home/a/.local/x"
        );
        assert_eq!(shell_quoted(Path::new("/tmp/a b")), "'/tmp/a b'");
        assert_eq!(shell_quoted(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
    }
}
