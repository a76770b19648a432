//! `--policy FILE`: a local RBAC policy the app's requests must also pass, on top of the
//! cluster's own RBAC (defence in depth, or a shared service account this pod should use
//! only in part).
//!
//! FILE holds `Role` and `ClusterRole` documents (multi-document YAML, or a `List`), as
//! `kubectl apply` takes them. A Role's rules apply in its `metadata.namespace`, or the
//! pod's namespace (`--namespace`, else the service account's `namespace` file) when it
//! has none, as `kubectl apply` would place it; a ClusterRole's rules apply everywhere,
//! as if bound by a ClusterRoleBinding. Matching is RBAC's own, ported from
//! `k8s.io/kubernetes/pkg/apis/rbac/v1/evaluation_helpers.go` (`VerbMatches`,
//! `APIGroupMatches`, `ResourceMatches`, `ResourceNameMatches`, `NonResourceURLMatches`).
//!
//! The request path reads the policy with one `ArcSwap` load; the file is re-read off the
//! request path when its directory changes (the token's inotify watcher, `reload`), and
//! a file that no longer parses keeps the last good policy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::access::attributes::Attributes;

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read --policy {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid --policy {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// One compiled policy: who may do what.
#[derive(Debug, Default)]
pub struct Policy {
    grants: Vec<Grant>,
}

#[derive(Debug)]
struct Grant {
    /// `None`: a ClusterRole (every namespace, cluster scope, non-resource URLs).
    namespace: Option<String>,
    rules: Vec<Rule>,
}

/// An RBAC `PolicyRule`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
}

/// A document as `kubectl apply` reads it; fields we do not use are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    api_version: Option<String>,
    kind: Option<Spanned<String>>,
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    rules: Vec<Spanned<Rule>>,
    #[serde(default)]
    items: Vec<Doc>,
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
}

const RBAC_V1: &str = "rbac.authorization.k8s.io/v1";

impl Policy {
    /// Parses FILE's text. `pod_namespace` is where a Role without a namespace applies.
    pub fn parse(text: &str, pod_namespace: &str) -> Result<Policy, String> {
        let docs: Vec<Doc> = serde_saphyr::from_multiple(text).map_err(|e| match e.location() {
            Some(l) => format!("line {}: {e}", l.line()),
            None => e.to_string(),
        })?;
        let mut policy = Policy::default();
        for (i, doc) in docs.into_iter().enumerate() {
            policy.add(doc, pod_namespace, &format!("document {}", i + 1))?;
        }
        Ok(policy)
    }

    fn add(&mut self, doc: Doc, pod_namespace: &str, what: &str) -> Result<(), String> {
        let Some(kind) = doc.kind else {
            return Err(format!("{what}: no kind (Role, ClusterRole or List)"));
        };
        let line = kind.referenced.line();
        let at = |msg: &str| format!("line {line}: {what} ({}): {msg}", kind.value);
        match kind.value.as_str() {
            "List" | "RoleList" | "ClusterRoleList" => {
                for (i, item) in doc.items.into_iter().enumerate() {
                    self.add(item, pod_namespace, &format!("{what}, item {}", i + 1))?;
                }
                return Ok(());
            }
            "Role" | "ClusterRole" => {}
            other => {
                return Err(at(&format!(
                    "kind {other:?} is not Role, ClusterRole or List"
                )));
            }
        }
        if doc.api_version.as_deref() != Some(RBAC_V1) {
            return Err(at(&format!(
                "apiVersion must be {RBAC_V1}, not {:?}",
                doc.api_version.unwrap_or_default()
            )));
        }
        if doc.metadata.name.as_deref().is_none_or(str::is_empty) {
            return Err(at("metadata.name is required"));
        }
        let role = kind.value == "Role";
        let mut rules = Vec::with_capacity(doc.rules.len());
        for rule in doc.rules {
            let line = rule.referenced.line();
            let rule = rule.value;
            // The API server's own validation (`ValidatePolicyRule`).
            let bad = if rule.verbs.is_empty() {
                Some("verbs must contain at least one value")
            } else if !rule.non_resource_urls.is_empty() && role {
                Some("namespaced rules cannot apply to non-resource URLs")
            } else if !rule.non_resource_urls.is_empty()
                && (!rule.api_groups.is_empty() || !rule.resources.is_empty())
            {
                Some("rules cannot apply to both regular resources and non-resource URLs")
            } else if rule.non_resource_urls.is_empty() && rule.api_groups.is_empty() {
                Some("resource rules must supply at least one api group")
            } else if rule.non_resource_urls.is_empty() && rule.resources.is_empty() {
                Some("resource rules must supply at least one resource")
            } else {
                None
            };
            if let Some(bad) = bad {
                return Err(format!("line {line}: {what} ({}): {bad}", kind.value));
            }
            rules.push(rule);
        }
        let namespace = role.then(|| {
            doc.metadata
                .namespace
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| pod_namespace.to_owned())
        });
        self.grants.push(Grant { namespace, rules });
        Ok(())
    }

    /// How many rules there are (all documents).
    pub fn rules(&self) -> usize {
        self.grants.iter().map(|g| g.rules.len()).sum()
    }

    /// Whether some rule allows the request (RBAC's `RuleAllows` over the rules that
    /// apply to its namespace).
    pub fn allows(&self, a: &Attributes<'_>) -> bool {
        self.grants.iter().any(|g| {
            let applies = match &g.namespace {
                None => true,
                Some(ns) => a.resource_request && a.namespace == ns.as_str(),
            };
            applies && g.rules.iter().any(|r| r.allows(a))
        })
    }
}

impl Rule {
    fn allows(&self, a: &Attributes<'_>) -> bool {
        let verb = self.verbs.iter().any(|v| v == "*" || *v == a.verb);
        if !verb {
            return false;
        }
        if !a.resource_request {
            return self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            });
        }
        self.api_groups.iter().any(|g| g == "*" || *g == a.group)
            && self.resources.iter().any(|r| resource_matches(r, a))
            && (self.resource_names.is_empty() || self.resource_names.iter().any(|n| *n == a.name))
    }
}

/// `ResourceMatches`: `*`, the resource (with `/subresource`), or `*/subresource`.
fn resource_matches(rule: &str, a: &Attributes<'_>) -> bool {
    if rule == "*" {
        return true;
    }
    if a.subresource.is_empty() {
        return rule == a.resource;
    }
    match rule.split_once('/') {
        Some((res, sub)) => sub == a.subresource && (res == a.resource || res == "*"),
        None => false,
    }
}

/// The `--policy` file and the policy read from it.
pub struct PolicyFile {
    path: PathBuf,
    pod_namespace: String,
    current: ArcSwap<Policy>,
    /// The text last read (good or bad), so an unchanged file is neither re-parsed nor
    /// re-reported. Only the reload task touches it.
    last_text: Mutex<String>,
}

impl PolicyFile {
    /// Reads FILE at start-up; an unreadable or invalid file is an error.
    pub fn load(path: &Path, pod_namespace: &str) -> Result<PolicyFile, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let policy =
            Policy::parse(&text, pod_namespace).map_err(|reason| PolicyError::Invalid {
                path: path.to_owned(),
                reason,
            })?;
        Ok(PolicyFile {
            path: path.to_owned(),
            pod_namespace: pod_namespace.to_owned(),
            current: ArcSwap::from_pointee(policy),
            last_text: Mutex::new(text),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rules in the current policy.
    pub fn rules(&self) -> usize {
        self.current.load().rules()
    }

    /// The current policy: one atomic load.
    pub fn allows(&self, a: &Attributes<'_>) -> bool {
        self.current.load().allows(a)
    }

    /// Re-reads FILE (blocking; from the reload task). A file that fails to read or parse
    /// keeps the last good policy, with an error logged once per bad content.
    pub fn reload_blocking(&self) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(
                    "cannot read --policy {}: {e}; keeping the last good policy",
                    self.path.display()
                );
                return;
            }
        };
        let mut last = self.last_text.lock().unwrap_or_else(|p| p.into_inner());
        if *last == text {
            return;
        }
        match Policy::parse(&text, &self.pod_namespace) {
            Ok(policy) => {
                let rules = policy.rules();
                self.current.store(Arc::new(policy));
                tracing::info!(policy = %self.path.display(), rules, "--policy changed on disk; now enforcing it");
            }
            Err(reason) => tracing::error!(
                "invalid --policy {}: {reason}; keeping the last good policy",
                self.path.display()
            ),
        }
        *last = text;
    }
}

impl crate::reload::Watched for PolicyFile {
    fn watched_file(&self) -> &Path {
        &self.path
    }

    fn reload_blocking(&self) {
        PolicyFile::reload_blocking(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::attributes::parse;

    const POLICY: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: app
rules:
- apiGroups: [""]
  resources: ["pods", "pods/log"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  resourceNames: ["web"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  resourceNames: ["settings"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: app-cluster
rules:
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list"]
- apiGroups: ["*"]
  resources: ["*/status"]
  verbs: ["get"]
- nonResourceURLs: ["/version", "/healthz/*"]
  verbs: ["get"]
"#;

    #[test]
    fn rbac_matching_table() {
        let p = Policy::parse(POLICY, "team").unwrap();
        for (method, target, allowed) in [
            ("GET", "/api/v1/namespaces/team/pods", true),
            ("GET", "/api/v1/namespaces/team/pods?watch=1", true),
            ("GET", "/api/v1/namespaces/team/pods/p", true),
            ("GET", "/api/v1/namespaces/team/pods/p/log", true),
            ("DELETE", "/api/v1/namespaces/team/pods/p", false),
            ("GET", "/api/v1/namespaces/team/pods/p/exec", false),
            ("POST", "/api/v1/namespaces/team/pods/p/exec", false),
            // A Role applies in its namespace only.
            ("GET", "/api/v1/namespaces/other/pods", false),
            ("GET", "/api/v1/pods", false),
            // resourceNames: the named object, and a list or watch narrowed to it.
            (
                "PATCH",
                "/apis/apps/v1/namespaces/team/deployments/web",
                true,
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/team/deployments/db",
                false,
            ),
            ("GET", "/apis/apps/v1/namespaces/team/deployments", false),
            (
                "GET",
                "/api/v1/namespaces/team/configmaps?fieldSelector=metadata.name%3Dsettings&watch=1",
                true,
            ),
            ("GET", "/api/v1/namespaces/team/configmaps?watch=1", false),
            // The group must match.
            (
                "GET",
                "/apis/extensions/v1beta1/namespaces/team/deployments/web",
                false,
            ),
            // ClusterRole: everywhere, cluster scope, `*/status`, non-resource URLs.
            ("GET", "/api/v1/nodes", true),
            ("GET", "/api/v1/nodes/n1", false),
            (
                "GET",
                "/apis/apps/v1/namespaces/x/deployments/d/status",
                true,
            ),
            (
                "PUT",
                "/apis/apps/v1/namespaces/x/deployments/d/status",
                false,
            ),
            ("GET", "/version", true),
            ("GET", "/version/", false),
            ("GET", "/healthz/etcd", true),
            ("GET", "/healthz", false),
            ("POST", "/version", false),
            ("GET", "/apis", false),
        ] {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target, None),
            };
            assert_eq!(
                p.allows(&parse(method, path, query)),
                allowed,
                "{method} {target}"
            );
        }
    }

    #[test]
    fn wildcards_lists_and_role_namespaces() {
        let p = Policy::parse(
            r#"
apiVersion: v1
kind: List
items:
- apiVersion: rbac.authorization.k8s.io/v1
  kind: Role
  metadata: {name: r, namespace: elsewhere}
  rules:
  - apiGroups: ["*"]
    resources: ["*"]
    verbs: ["*"]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRole
  metadata: {name: c}
  rules:
  - nonResourceURLs: ["*"]
    verbs: ["get"]
"#,
            "team",
        )
        .unwrap();
        let allows = |m, path| p.allows(&parse(m, path, None));
        assert!(allows(
            "DELETE",
            "/apis/x.io/v1/namespaces/elsewhere/things"
        ));
        assert!(!allows("GET", "/api/v1/namespaces/team/pods"));
        assert!(!allows("GET", "/api/v1/nodes"));
        assert!(allows("GET", "/openapi/v2"));
        assert!(!allows("POST", "/openapi/v2"));
        // An empty policy allows nothing.
        let empty = Policy::parse("", "team").unwrap();
        assert!(!empty.allows(&parse("GET", "/version", None)));
    }

    #[test]
    fn bad_files_name_the_line_and_the_reason() {
        for (text, want) in [
            (
                "kind: Role\napiVersion: v1\nmetadata: {name: a}\n",
                "line 1: document 1 (Role): apiVersion must be rbac.authorization.k8s.io/v1",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
                "line 2: document 1 (ConfigMap): kind \"ConfigMap\" is not Role",
            ),
            (
                "apiVersion: rbac.authorization.k8s.io/v1\nmetadata: {name: a}\n",
                "document 1: no kind",
            ),
            (
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: a}\nrules:\n- apiGroups: [\"\"]\n  resources: [pods]\n",
                "line 5: document 1 (Role): verbs must contain at least one value",
            ),
            (
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: a}\nrules:\n- nonResourceURLs: [/version]\n  verbs: [get]\n",
                "line 5: document 1 (Role): namespaced rules cannot apply to non-resource URLs",
            ),
            (
                "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: a}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: b}\nrules:\n- resources: [pods]\n  verbs: [get]\n",
                "line 10: document 2 (ClusterRole): resource rules must supply at least one api group",
            ),
            (
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {}\n",
                "metadata.name is required",
            ),
            ("kind: [unclosed\n", "line "),
            ("rules: 3\nkind: Role\n", "line 1"),
        ] {
            let err = Policy::parse(text, "team").unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
