//! Kubeconfig files: loading, merging and selecting a context, as kubectl does.
//!
//! Loading rules (client-go's `ClientConfigLoadingRules`): `--kubeconfig` (must exist),
//! else every file in `KUBECONFIG` (missing ones skipped) merged so that the first file
//! to define a name (cluster, user, context) or `current-context` wins, else
//! `~/.kube/config`. Relative paths inside a file are relative to that file's directory.
//!
//! Our own serde types rather than kube-client's `config` feature: these ~150 lines are
//! all we need, while that feature brings kube-core and k8s-openapi with it. YAML is
//! parsed by serde-saphyr, the maintained parser kube-rs itself moved to.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::credentials::Secret;

/// One file's contents (or several merged).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Kubeconfig {
    #[serde(default)]
    pub clusters: Option<Vec<NamedCluster>>,
    #[serde(default)]
    pub users: Option<Vec<NamedUser>>,
    #[serde(default)]
    pub contexts: Option<Vec<NamedContext>>,
    #[serde(default)]
    pub current_context: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct NamedCluster {
    pub name: String,
    #[serde(default)]
    pub cluster: Cluster,
}

#[derive(Debug, Deserialize)]
pub(crate) struct NamedUser {
    pub name: String,
    #[serde(default)]
    pub user: AuthInfo,
}

#[derive(Debug, Deserialize)]
pub(crate) struct NamedContext {
    pub name: String,
    #[serde(default)]
    pub context: Context,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Cluster {
    pub server: Option<String>,
    pub certificate_authority: Option<PathBuf>,
    pub certificate_authority_data: Option<String>,
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    pub tls_server_name: Option<String>,
    /// May hold the proxy's user and password.
    pub proxy_url: Option<Secret>,
    #[serde(default)]
    pub disable_compression: bool,
    /// `extensions[name=client.authentication.k8s.io/exec].extension`, handed to exec
    /// plugins with `provideClusterInfo`.
    #[serde(default)]
    pub extensions: Option<Vec<NamedExtension>>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NamedExtension {
    pub name: String,
    #[serde(default)]
    pub extension: Option<serde_json::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct AuthInfo {
    pub token: Option<Secret>,
    #[serde(rename = "tokenFile")]
    pub token_file: Option<PathBuf>,
    #[serde(rename = "client-certificate")]
    pub client_certificate: Option<PathBuf>,
    #[serde(rename = "client-key")]
    pub client_key: Option<PathBuf>,
    #[serde(rename = "client-certificate-data")]
    pub client_certificate_data: Option<String>,
    #[serde(rename = "client-key-data")]
    pub client_key_data: Option<Secret>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    #[serde(rename = "as")]
    pub impersonate: Option<String>,
    #[serde(rename = "as-groups")]
    pub impersonate_groups: Option<Vec<String>>,
    #[serde(rename = "as-uid")]
    pub impersonate_uid: Option<String>,
    pub exec: Option<ExecConfig>,
    #[serde(rename = "auth-provider")]
    pub auth_provider: Option<AuthProvider>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecConfig {
    pub command: String,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<ExecEnv>>,
    pub api_version: Option<String>,
    pub install_hint: Option<String>,
    #[serde(default)]
    pub provide_cluster_info: bool,
    pub interactive_mode: Option<String>,
}

/// One `env` entry of an exec plugin; its `Debug` leaves out the value, which often
/// holds a secret (cloud credentials).
#[derive(Clone, Deserialize)]
pub(crate) struct ExecEnv {
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for ExecEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecEnv")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AuthProvider {
    pub name: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct Context {
    pub cluster: Option<String>,
    pub user: Option<String>,
}

/// Kubeconfig problems, with the file or name involved.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid kubeconfig {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("context {name:?} not found in kubeconfig {files}")]
    NoContext { name: String, files: String },
    #[error("cluster {name:?} not found in kubeconfig {files}")]
    NoCluster { name: String, files: String },
    #[error("user {name:?} not found in kubeconfig {files}")]
    NoUser { name: String, files: String },
    #[error("the kubeconfig context {context:?} names no cluster; pass --cluster or fix {files}")]
    ContextWithoutCluster { context: String, files: String },
}

/// The merged configuration and the files it came from.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub config: Kubeconfig,
    pub files: Vec<PathBuf>,
}

/// What a chosen context resolves to.
#[derive(Debug, Clone)]
pub(crate) struct Selected {
    pub context: Option<String>,
    pub cluster_name: String,
    pub cluster: Cluster,
    pub user_name: Option<String>,
    pub user: AuthInfo,
    pub files: String,
}

/// Finds and merges kubeconfig files. `Ok(None)`: there is none to use.
pub(crate) fn load(
    explicit: Option<&Path>,
    env: Option<&std::ffi::OsStr>,
    home: Option<&Path>,
) -> Result<Option<Loaded>, KubeconfigError> {
    let files: Vec<PathBuf> = if let Some(path) = explicit {
        vec![path.to_owned()]
    } else if let Some(list) = env.filter(|v| !v.is_empty()) {
        std::env::split_paths(list)
            .filter(|p| !p.as_os_str().is_empty() && p.exists())
            .collect()
    } else {
        home.map(|h| h.join(".kube").join("config"))
            .filter(|p| p.exists())
            .into_iter()
            .collect()
    };
    if files.is_empty() {
        return Ok(None);
    }
    let mut merged = Kubeconfig::default();
    for path in &files {
        let mut one = read(path)?;
        absolutize(&mut one, path.parent().unwrap_or(Path::new(".")));
        merge(&mut merged, one);
    }
    Ok(Some(Loaded {
        config: merged,
        files,
    }))
}

fn read(path: &Path) -> Result<Kubeconfig, KubeconfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| KubeconfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(Kubeconfig::default());
    }
    serde_saphyr::from_str(&text).map_err(|e| KubeconfigError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Makes a file's relative paths relative to its directory (client-go `ResolvePaths`).
fn absolutize(config: &mut Kubeconfig, base: &Path) {
    let fix = |p: &mut Option<PathBuf>| {
        if let Some(path) = p
            && path.is_relative()
            && !path.as_os_str().is_empty()
        {
            *path = base.join(&*path);
        }
    };
    for c in config.clusters.iter_mut().flatten() {
        fix(&mut c.cluster.certificate_authority);
    }
    for u in config.users.iter_mut().flatten() {
        fix(&mut u.user.token_file);
        fix(&mut u.user.client_certificate);
        fix(&mut u.user.client_key);
        if let Some(exec) = &mut u.user.exec {
            // A command with a slash is a path relative to the file; a bare name is
            // looked up in PATH.
            if exec.command.contains('/') && Path::new(&exec.command).is_relative() {
                exec.command = base.join(&exec.command).to_string_lossy().into_owned();
            }
        }
    }
}

/// The first definition of a name wins, and the first `current-context`.
fn merge(into: &mut Kubeconfig, from: Kubeconfig) {
    fn add<T>(into: &mut Option<Vec<T>>, from: Option<Vec<T>>, name: impl Fn(&T) -> &str) {
        let list = into.get_or_insert_with(Vec::new);
        let mut seen: HashSet<String> = list.iter().map(|t| name(t).to_owned()).collect();
        for item in from.into_iter().flatten() {
            if seen.insert(name(&item).to_owned()) {
                list.push(item);
            }
        }
    }
    add(&mut into.clusters, from.clusters, |c| &c.name);
    add(&mut into.users, from.users, |u| &u.name);
    add(&mut into.contexts, from.contexts, |c| &c.name);
    if into.current_context.as_deref().unwrap_or("").is_empty() {
        into.current_context = from.current_context.filter(|c| !c.is_empty());
    }
}

/// Names chosen on the command line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Choice<'a> {
    pub context: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub user: Option<&'a str>,
}

impl Loaded {
    /// Why `select` found nothing with no names given: the files have no
    /// `current-context`. Lists the contexts there are, to pass with --context.
    pub(crate) fn no_current_context(&self) -> String {
        let files = self
            .files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let names: Vec<&str> = self
            .config
            .contexts
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        if names.is_empty() {
            format!("{files} has no current-context and no contexts")
        } else {
            format!(
                "{files} has no current-context; pass --context=NAME (contexts: {})",
                names.join(", ")
            )
        }
    }

    /// Resolves the context. `Ok(None)` when nothing is selected at all (no current
    /// context and no names given): kubectl then falls back to in-cluster.
    pub(crate) fn select(&self, choice: Choice<'_>) -> Result<Option<Selected>, KubeconfigError> {
        let files = self
            .files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let cfg = &self.config;
        let context_name = choice
            .context
            .map(str::to_owned)
            .or_else(|| cfg.current_context.clone());
        let context = match &context_name {
            Some(name) => Some(
                named(&cfg.contexts, name, |c| (&c.name, &c.context)).ok_or_else(|| {
                    KubeconfigError::NoContext {
                        name: name.clone(),
                        files: files.clone(),
                    }
                })?,
            ),
            None => None,
        };
        let cluster_name = choice
            .cluster
            .map(str::to_owned)
            .or_else(|| context.as_ref().and_then(|c| c.cluster.clone()));
        let Some(cluster_name) = cluster_name else {
            return match context_name {
                Some(context) if choice.cluster.is_none() => {
                    Err(KubeconfigError::ContextWithoutCluster { context, files })
                }
                _ => Ok(None),
            };
        };
        let cluster =
            named(&cfg.clusters, &cluster_name, |c| (&c.name, &c.cluster)).ok_or_else(|| {
                KubeconfigError::NoCluster {
                    name: cluster_name.clone(),
                    files: files.clone(),
                }
            })?;
        let user_name = choice
            .user
            .map(str::to_owned)
            .or_else(|| context.as_ref().and_then(|c| c.user.clone()))
            .filter(|u| !u.is_empty());
        let user = match &user_name {
            Some(name) => named(&cfg.users, name, |u| (&u.name, &u.user)).ok_or_else(|| {
                KubeconfigError::NoUser {
                    name: name.clone(),
                    files: files.clone(),
                }
            })?,
            None => AuthInfo::default(),
        };
        Ok(Some(Selected {
            context: context_name,
            cluster_name,
            cluster,
            user_name,
            user,
            files,
        }))
    }
}

/// The entry named `name` in one of the kubeconfig's named lists (contexts, clusters,
/// users), copied out; `parts` gives an entry's name and value.
fn named<N, V: Clone>(
    list: &Option<Vec<N>>,
    name: &str,
    parts: impl Fn(&N) -> (&String, &V),
) -> Option<V> {
    list.iter()
        .flatten()
        .map(parts)
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const A: &str = r#"
apiVersion: v1
kind: Config
current-context: a
clusters:
- name: shared
  cluster:
    server: https://a.example:6443
    certificate-authority: certs/ca.crt
- name: only-a
  cluster: {server: "https://only-a.example"}
users:
- name: shared
  user:
    tokenFile: token
    as: alice
    as-groups: [devs, ops]
contexts:
- name: a
  context: {cluster: shared, user: shared, namespace: team-a}
"#;

    const B: &str = r#"
current-context: b
clusters:
- name: shared
  cluster: {server: "https://b.example"}
- name: only-b
  cluster:
    server: https://only-b.example
    insecure-skip-tls-verify: true
users:
- name: b-user
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: ./bin/plugin
      args: ["--x"]
      env: [{name: A, value: "1"}]
      provideClusterInfo: true
      interactiveMode: Never
contexts:
- name: b
  context: {cluster: only-b, user: b-user}
"#;

    #[test]
    fn merge_first_definition_wins_and_paths_are_relative_to_their_file() {
        let dir = tempfile_dir();
        let a = write(&dir, "a.yaml", A);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let b = write(&dir.join("sub"), "b.yaml", B);
        let list = std::env::join_paths([a.clone(), dir.join("missing"), b.clone()]).unwrap();
        let loaded = load(None, Some(&list), None).unwrap().unwrap();
        assert_eq!(loaded.files, [a.clone(), b.clone()]);
        let sel = loaded.select(Choice::default()).unwrap().unwrap();
        assert_eq!(sel.context.as_deref(), Some("a"));
        assert_eq!(
            sel.cluster.server.as_deref(),
            Some("https://a.example:6443")
        );
        assert_eq!(
            sel.cluster.certificate_authority,
            Some(dir.join("certs/ca.crt"))
        );
        assert_eq!(sel.user.token_file, Some(dir.join("token")));
        assert_eq!(sel.user.impersonate.as_deref(), Some("alice"));
        assert_eq!(
            sel.user.impersonate_groups.as_deref(),
            Some(&["devs".to_owned(), "ops".to_owned()][..])
        );

        let sel = loaded
            .select(Choice {
                context: Some("b"),
                ..Choice::default()
            })
            .unwrap()
            .unwrap();
        assert!(sel.cluster.insecure_skip_tls_verify);
        let exec = sel.user.exec.unwrap();
        assert_eq!(
            exec.command,
            dir.join("sub").join("./bin/plugin").to_string_lossy()
        );
        assert!(exec.provide_cluster_info);
        assert_eq!(exec.interactive_mode.as_deref(), Some("Never"));

        let err = loaded
            .select(Choice {
                context: Some("nope"),
                ..Choice::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("\"nope\""), "{err}");
        assert!(err.to_string().contains("a.yaml"), "{err}");
        let sel = loaded
            .select(Choice {
                cluster: Some("only-a"),
                user: Some("b-user"),
                ..Choice::default()
            })
            .unwrap()
            .unwrap();
        assert_eq!(sel.cluster_name, "only-a");
        assert!(sel.user.exec.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loading_rules() {
        let dir = tempfile_dir();
        assert!(load(None, None, Some(&dir)).unwrap().is_none());
        std::fs::create_dir_all(dir.join(".kube")).unwrap();
        write(&dir.join(".kube"), "config", A);
        assert!(load(None, None, Some(&dir)).unwrap().is_some());
        let err = load(Some(&dir.join("absent")), None, Some(&dir)).unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
        let bad = write(&dir, "bad.yaml", "clusters: [");
        let err = load(Some(&bad), None, None).unwrap_err();
        assert!(err.to_string().contains("bad.yaml"), "{err}");
        let empty = write(&dir, "empty.yaml", "");
        let loaded = load(Some(&empty), None, None).unwrap().unwrap();
        assert!(loaded.select(Choice::default()).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_in_a_kubeconfig_never_print() {
        let cfg: Kubeconfig = serde_saphyr::from_str(
            "users: [{name: u, user: {token: s3cr3t, password: hunter2, client-key-data: a2V5}}]\n\
             clusters: [{name: c, cluster: {proxy-url: 'http://u:pr0xypw@proxy:3128'}}]\n\
             contexts: []\n",
        )
        .unwrap();
        let dbg = format!("{cfg:?}");
        let exec: Kubeconfig = serde_saphyr::from_str(
            "users: [{name: e, user: {exec: {command: p, env: [{name: K, value: envs3cr3t}]}}}]",
        )
        .unwrap();
        assert!(!format!("{exec:?}").contains("envs3cr3t"));
        for secret in ["s3cr3t", "hunter2", "a2V5", "pr0xypw"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
    }

    fn tempfile_dir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ka-kubeconfig-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
