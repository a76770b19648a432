//! `--record-rbac FILE`: the least-privilege RBAC the app really needs, learnt from the
//! requests it makes, kept up to date in FILE for review and `kubectl apply`.
//!
//! Like audit2rbac, but from the one component that sees all of a pod's API traffic,
//! without the API server's audit log. Each distinct (namespace, group, resource, verb)
//! or (non-resource URL, verb) is noted on the request path in a bounded lock-free set
//! (`intern`); a writer task renders the set at most every [`WRITE_EVERY`] when it
//! changed, and once more at exit, atomically (temporary file + rename, so a reader never
//! sees half a file). The output is deterministic (sorted), one rule per (group,
//! resource) with its verbs merged and sorted: a `Role` for the pod's namespace and a
//! `ClusterRole` for the rest (cluster-scoped resources, other namespaces, non-resource
//! URLs). Requests refused with 403, by the API server or by `--policy`, are included
//! (that is what the app needs and lacks) and marked by a comment on their rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use crate::access::attributes::Attributes;
use crate::access::intern::{Interner, hash_parts};

/// How often, at most, FILE is rewritten.
pub(crate) const WRITE_EVERY: Duration = Duration::from_secs(2);
/// Distinct (scope, group, resource, verb) kept; beyond, requests are not recorded.
const ENTRIES: usize = 4096;
/// The recorded objects' `metadata.name`.
pub(crate) const NAME: &str = "kube-ambassador-recorded";

const SEEN: u8 = 1;
const REFUSED_BY_SERVER: u8 = 2;
const REFUSED_BY_POLICY: u8 = 4;

/// Who answered a request with 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ApiServer,
    Policy,
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    resource_request: bool,
    namespace: Box<str>,
    group: Box<str>,
    /// `pods` or `pods/log`; for a non-resource request, the path.
    resource: Box<str>,
    verb: Box<str>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write --record-rbac {path}: {source}")]
pub struct RecordError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

pub struct Recorder {
    path: PathBuf,
    pod_namespace: String,
    entries: Interner<Entry>,
    flags: Box<[AtomicU8]>,
    dirty: AtomicBool,
    full_warned: AtomicBool,
    /// Serialises writers (the periodic one and the one at exit); never on the request
    /// path.
    writing: Mutex<()>,
}

impl Recorder {
    pub fn new(path: &Path, pod_namespace: &str) -> Recorder {
        let entries = Interner::new(ENTRIES);
        Recorder {
            path: path.to_owned(),
            pod_namespace: pod_namespace.to_owned(),
            flags: (0..entries.capacity()).map(|_| AtomicU8::new(0)).collect(),
            entries,
            // Written once at start too: FILE exists (and is valid) from the start.
            dirty: AtomicBool::new(true),
            full_warned: AtomicBool::new(false),
            writing: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notes a request; returns its entry for [`Recorder::refused`].
    pub fn note(&self, a: &Attributes<'_>) -> Option<usize> {
        if a.verb.is_empty() {
            // A method the API server has no verb for: nothing RBAC could grant.
            return None;
        }
        let (namespace, group) = if a.resource_request {
            (a.namespace, a.group)
        } else {
            ("", "")
        };
        // Compared and hashed as parts: no allocation unless the entry is new.
        let (resource, sub) = if a.resource_request {
            (a.resource, a.subresource)
        } else {
            (a.path, "")
        };
        let hash = hash_parts(&[
            if a.resource_request { "r" } else { "n" },
            namespace,
            group,
            resource,
            sub,
            &a.verb,
        ]);
        let same_resource = |combined: &str| match combined.strip_prefix(resource) {
            Some(rest) if sub.is_empty() => rest.is_empty(),
            Some(rest) => rest.strip_prefix('/') == Some(sub),
            None => false,
        };
        let index = self.entries.index(
            hash,
            |e| {
                e.resource_request == a.resource_request
                    && *e.namespace == *namespace
                    && *e.group == *group
                    && same_resource(&e.resource)
                    && *e.verb == *a.verb
            },
            || Entry {
                resource_request: a.resource_request,
                namespace: namespace.into(),
                group: group.into(),
                resource: if sub.is_empty() {
                    resource.into()
                } else {
                    format!("{resource}/{sub}").into()
                },
                verb: (*a.verb).into(),
            },
        );
        let Some(index) = index else {
            if !self.full_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "--record-rbac: more than {ENTRIES} distinct resources and verbs; \
                     later ones are not recorded"
                );
            }
            return None;
        };
        self.mark(index, SEEN);
        Some(index)
    }

    /// The request of `entry` was answered 403.
    pub fn refused(&self, entry: usize, by: Refusal) {
        self.mark(
            entry,
            match by {
                Refusal::ApiServer => REFUSED_BY_SERVER,
                Refusal::Policy => REFUSED_BY_POLICY,
            },
        );
    }

    fn mark(&self, entry: usize, flag: u8) {
        if let Some(f) = self.flags.get(entry)
            && f.fetch_or(flag, Ordering::Relaxed) & flag == 0
        {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Writes FILE if something changed since the last write.
    pub fn write_if_changed(&self) -> Result<bool, RecordError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let text = self.render();
        self.write(&text).inspect_err(|_| {
            // Try again next time.
            self.dirty.store(true, Ordering::Release);
        })?;
        Ok(true)
    }

    /// temp file in FILE's directory, fsync, rename over FILE.
    fn write(&self, text: &str) -> Result<(), RecordError> {
        let err = |source| RecordError {
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "record".to_owned());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(err)
    }

    /// The recorded Role and ClusterRole as YAML.
    pub fn render(&self) -> String {
        // (group, resource) -> verb -> flags; plus namespaces for the ClusterRole.
        type Rules<'a> = BTreeMap<(&'a str, &'a str), (BTreeMap<&'a str, u8>, BTreeSet<&'a str>)>;
        let mut role: Rules<'_> = BTreeMap::new();
        let mut cluster: Rules<'_> = BTreeMap::new();
        let mut urls: BTreeMap<&str, BTreeMap<&str, u8>> = BTreeMap::new();
        for (i, e) in self.entries.iter() {
            let flags = self.flags[i].load(Ordering::Relaxed);
            if flags & SEEN == 0 {
                continue;
            }
            if !e.resource_request {
                *urls
                    .entry(&e.resource)
                    .or_default()
                    .entry(&e.verb)
                    .or_default() |= flags;
                continue;
            }
            let rules = if *e.namespace == *self.pod_namespace {
                &mut role
            } else {
                &mut cluster
            };
            let rule = rules.entry((&e.group, &e.resource)).or_default();
            *rule.0.entry(&e.verb).or_default() |= flags;
            rule.1.insert(&e.namespace);
        }

        let mut out = String::new();
        out.push_str(
            "# Recorded by kube-ambassador --record-rbac: every API request the app made, as\n\
             # RBAC rules (one per API group and resource, verbs merged). Review it, apply it,\n\
             # bind it to the app's service account, then drop broader bindings; enforce it\n\
             # locally with --policy. Rules marked \"refused\" were answered 403: the app\n\
             # asked for them and lacks them.\n",
        );
        let role_empty = role.is_empty();
        let cluster_empty = cluster.is_empty() && urls.is_empty();
        if !role_empty || cluster_empty {
            let _ = write!(
                out,
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {NAME}\n  namespace: {}\nrules:",
                quote(&self.pod_namespace)
            );
            if role_empty {
                out.push_str(" []");
            }
            out.push('\n');
            for ((group, resource), (verbs, _)) in &role {
                push_rule(&mut out, group, resource, verbs, None);
            }
        }
        if !cluster_empty {
            if !role_empty {
                out.push_str("---\n");
            }
            let _ = write!(
                out,
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {NAME}\nrules:\n"
            );
            for ((group, resource), (verbs, namespaces)) in &cluster {
                push_rule(&mut out, group, resource, verbs, Some(namespaces));
            }
            for (url, verbs) in &urls {
                push_refusals(&mut out, verbs);
                let _ = writeln!(out, "- nonResourceURLs: [{}]", quote(url));
                let _ = writeln!(out, "  verbs: [{}]", list(verbs.keys()));
            }
        }
        out
    }
}

fn push_rule(
    out: &mut String,
    group: &str,
    resource: &str,
    verbs: &BTreeMap<&str, u8>,
    namespaces: Option<&BTreeSet<&str>>,
) {
    if let Some(ns) = namespaces {
        let named: Vec<&str> = ns.iter().copied().filter(|n| !n.is_empty()).collect();
        if ns.contains("") {
            out.push_str("# cluster-scoped, or across all namespaces\n");
        }
        if !named.is_empty() {
            let _ = writeln!(
                out,
                "# in namespaces {} (a RoleBinding there can grant just those)",
                named.join(", ")
            );
        }
    }
    push_refusals(out, verbs);
    let _ = writeln!(out, "- apiGroups: [{}]", quote(group));
    let _ = writeln!(out, "  resources: [{}]", quote(resource));
    let _ = writeln!(out, "  verbs: [{}]", list(verbs.keys()));
}

fn push_refusals(out: &mut String, verbs: &BTreeMap<&str, u8>) {
    for (flag, by) in [
        (REFUSED_BY_SERVER, "by the API server"),
        (REFUSED_BY_POLICY, "by --policy"),
    ] {
        let refused: Vec<&str> = verbs
            .iter()
            .filter(|(_, f)| **f & flag != 0)
            .map(|(v, _)| *v)
            .collect();
        if !refused.is_empty() {
            let _ = writeln!(out, "# refused (403) {by}: {}", refused.join(", "));
        }
    }
}

fn list<'a>(items: impl Iterator<Item = &'a &'a str>) -> String {
    items.map(|s| quote(s)).collect::<Vec<_>>().join(", ")
}

/// A YAML double-quoted scalar (a JSON string is one: YAML 1.2 §7.3.1).
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Writes FILE every [`WRITE_EVERY`] while it changes; the caller writes once more at
/// exit with [`Recorder::write_if_changed`].
pub(crate) fn spawn_writer(rec: std::sync::Arc<Recorder>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WRITE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = rec.clone();
            match tokio::task::spawn_blocking(move || r.write_if_changed()).await {
                Ok(Ok(true)) => {
                    tracing::debug!(file = %rec.path().display(), "--record-rbac written")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!("{e}"),
                Err(_) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::attributes::parse;

    #[test]
    fn rules_are_merged_sorted_and_split_by_scope() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::new(&dir.path().join("rbac.yaml"), "team");
        for (m, p, q) in [
            ("GET", "/api/v1/namespaces/team/pods", Some("watch=1")),
            ("GET", "/api/v1/namespaces/team/pods", None),
            ("GET", "/api/v1/namespaces/team/pods/p/log", None),
            ("DELETE", "/api/v1/namespaces/team/pods/p", None),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/team/deployments/web",
                None,
            ),
            ("GET", "/api/v1/nodes", None),
            ("GET", "/api/v1/namespaces/other/configmaps/c", None),
            ("GET", "/api/v1/namespaces/b-ns/configmaps/c", None),
            ("GET", "/version", None),
            ("GET", "/version", None),
            ("OPTIONS", "/api/v1/namespaces/team/pods", None),
        ] {
            rec.note(&parse(m, p, q));
        }
        let secret = rec
            .note(&parse("GET", "/api/v1/namespaces/team/secrets/s", None))
            .unwrap();
        rec.refused(secret, Refusal::ApiServer);
        let exec = rec
            .note(&parse("POST", "/api/v1/namespaces/team/pods/p/exec", None))
            .unwrap();
        rec.refused(exec, Refusal::Policy);
        let want = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: kube-ambassador-recorded
  namespace: "team"
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["delete", "list", "watch"]
# refused (403) by --policy: create
- apiGroups: [""]
  resources: ["pods/exec"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# refused (403) by the API server: get
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: kube-ambassador-recorded
rules:
# in namespaces b-ns, other (a RoleBinding there can grant just those)
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
# cluster-scoped, or across all namespaces
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list"]
- nonResourceURLs: ["/version"]
  verbs: ["get"]
"#;
        let got = rec.render();
        let body = got.split_once("locally with --policy").unwrap().1;
        let body = body.split_once("lacks them.\n").unwrap().1;
        assert_eq!(body, want, "{got}");
        assert_eq!(rec.render(), got, "deterministic");

        assert!(rec.write_if_changed().unwrap());
        assert!(!rec.write_if_changed().unwrap(), "nothing new");
        assert_eq!(std::fs::read_to_string(rec.path()).unwrap(), got);
        rec.note(&parse("GET", "/version", None));
        assert!(!rec.write_if_changed().unwrap(), "seen before");
        rec.refused(secret, Refusal::ApiServer);
        assert!(!rec.write_if_changed().unwrap(), "marked before");
        rec.note(&parse("GET", "/healthz", None));
        assert!(rec.write_if_changed().unwrap());
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn nothing_recorded_is_still_a_valid_role() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::new(&dir.path().join("rbac.yaml"), "team");
        let text = rec.render();
        assert!(
            text.ends_with("  namespace: \"team\"\nrules: []\n"),
            "{text}"
        );
        let policy = crate::access::policy::Policy::parse(&text, "team").unwrap();
        assert!(!policy.allows(&parse("GET", "/version", None)));
    }
}
