//! `kube-ambassador inject`: adds the sidecar to every pod template of a set of manifests
//! (as `linkerd inject` and `istioctl kube-inject` do), or removes it (`--uninject`).
//!
//! Pure: text in, text out; `main` does the reading and writing. YAML in gives YAML out
//! (every document, `List` items included, as `kubectl get -o yaml` prints them), JSON
//! in gives JSON out. Comments do not survive (the documents go through a data model);
//! key order does.
//!
//! The sidecar is the one of `manifests/` (native-sidecar.yaml, deployment.yaml): same
//! args, probes, hardened `securityContext` and the resources measured in the README's
//! "Resource usage". Injecting is "remove what a previous injection added, then add", so
//! a second run gives the same output and a changed option updates the sidecar in place.

use serde_json::{Map, Value, json};

/// The sidecar container's name; a container of this name is ours.
pub const CONTAINER: &str = "kube-ambassador";
/// The projected service-account volume of `--isolate-token`.
pub const VOLUME: &str = "kube-ambassador-token";
/// Recorded on a pod template whose `automountServiceAccountToken: false` inject set
/// (so that `--uninject` removes only what inject added).
pub const ISOLATED_ANNOTATION: &str = "kube-ambassador.io/isolated-token";
/// The admin port's name (unique in the pod, at most 15 characters: IANA_SVC_NAME).
const ADMIN_PORT_NAME: &str = "ka-admin";
/// Where client-go's `InClusterConfig` (and so kube-ambassador) looks for the token.
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What to add.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    /// A regular container (clusters older than 1.29) instead of the native sidecar.
    pub classic: bool,
    /// Mount the token into the sidecar alone (`automountServiceAccountToken: false`).
    pub isolate_token: bool,
    /// The variable that tells app containers where the proxy is.
    pub env_name: String,
    pub proxy_port: u16,
    pub admin_port: u16,
    pub uninject: bool,
}

/// Why the input could not be injected; names the document and the field.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cannot parse the input as {format}: {reason}")]
    Parse {
        format: &'static str,
        reason: String,
    },
    #[error("{doc}, {field}: {reason}")]
    Field {
        doc: String,
        field: String,
        reason: String,
    },
    #[error("cannot write the output as {format}: {reason}")]
    Write {
        format: &'static str,
        reason: String,
    },
}

/// Injects (or uninjects) every document of `input`.
pub fn run(input: &str, opts: &Options) -> Result<String, InjectError> {
    let json = input.trim_start().starts_with(['{', '[']);
    let mut docs: Vec<Value> = if json {
        serde_json::Deserializer::from_str(input)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| InjectError::Parse {
                format: "JSON",
                reason: e.to_string(),
            })?
    } else {
        serde_saphyr::from_multiple::<Option<Value>>(input)
            .map_err(|e| InjectError::Parse {
                format: "YAML",
                reason: e.to_string(),
            })?
            .into_iter()
            .flatten()
            .collect()
    };
    for (i, doc) in docs.iter_mut().enumerate() {
        object(doc, &format!("document {}", i + 1), "", opts)?;
    }
    if json {
        let mut out = String::new();
        for doc in &docs {
            let text = serde_json::to_string_pretty(doc).map_err(|e| InjectError::Write {
                format: "JSON",
                reason: e.to_string(),
            })?;
            out.push_str(&text);
            out.push('\n');
        }
        Ok(out)
    } else {
        // Long strings stay on one line, as kubectl prints them (no folding at 80
        // columns); strings with newlines are literal blocks.
        let options = serde_saphyr::ser_options! { folded_wrap_chars: 1 << 20 };
        serde_saphyr::to_string_multiple_with_options(&docs, options).map_err(|e| {
            InjectError::Write {
                format: "YAML",
                reason: e.to_string(),
            }
        })
    }
}

/// Where each kind keeps its pod spec. `List` (what `kubectl get -o yaml` prints) is
/// handled by its items.
fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &["spec"],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template", "spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        "PodTemplate" => &["template", "spec"],
        _ => return None,
    })
}

/// One object (a document, or an item of a `List`); `prefix` is its field path.
fn object(v: &mut Value, doc: &str, prefix: &str, opts: &Options) -> Result<(), InjectError> {
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let label = if name.is_empty() {
        format!("{doc} ({kind})")
    } else {
        format!("{doc} ({kind} {name})")
    };
    if kind == "List" || (kind.ends_with("List") && v.get("items").is_some_and(Value::is_array)) {
        if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
            for (i, item) in items.iter_mut().enumerate() {
                object(item, doc, &format!("{prefix}items[{i}]."), opts)?;
            }
        }
        return Ok(());
    }
    let Some(path) = pod_spec_path(&kind) else {
        // Unknown kinds pass through, unless they hold a pod template we would skip.
        if let Some(at) = find_pod_spec(v, String::new()) {
            return Err(InjectError::Field {
                doc: label,
                field: format!("{prefix}{at}"),
                reason: format!(
                    "kind {kind:?} holds a pod template here, and inject knows only Pod, \
                     Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, \
                     ReplicationController and PodTemplate; add the sidecar to it by hand \
                     (see manifests/deployment.yaml) or leave this document out"
                ),
            });
        }
        return Ok(());
    };
    let field = format!("{prefix}{}", path.join("."));
    let err = |field: String, reason: String| InjectError::Field {
        doc: label.clone(),
        field,
        reason,
    };
    if opts.classic && !opts.uninject && matches!(kind.as_str(), "Job" | "CronJob") {
        return Err(err(
            field,
            "a regular-container sidecar (--classic) never exits, so the Job would never \
             complete; use the native sidecar (Kubernetes >= 1.29), which stops with the Job"
                .to_owned(),
        ));
    }
    let template_meta_path = &path[..path.len() - 1];
    let isolated_before = annotation(v, template_meta_path);
    let Some(spec) = pointer_mut(v, path) else {
        return Err(err(field, "missing: no pod spec to inject into".to_owned()));
    };
    let Some(spec) = spec.as_object_mut() else {
        return Err(err(field, "not an object".to_owned()));
    };
    let position = remove(spec, opts, isolated_before);
    if isolated_before {
        set_annotation(v, template_meta_path, false);
    }
    if opts.uninject {
        return Ok(());
    }
    let spec = pointer_mut(v, path)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| err(field.clone(), "not an object".to_owned()))?;
    check_ports(spec, opts).map_err(|(f, r)| err(format!("{field}.{f}"), r))?;
    let isolate = add(spec, opts, position).map_err(|(f, r)| err(format!("{field}.{f}"), r))?;
    if isolate {
        set_annotation(v, template_meta_path, true);
    }
    Ok(())
}

fn pointer_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |at, key| at.get_mut(*key))
}

/// The first field below `v` that looks like a pod spec (an object with a `containers`
/// list), as a dotted path.
fn find_pod_spec(v: &Value, at: String) -> Option<String> {
    let obj = v.as_object()?;
    if obj.get("containers").is_some_and(Value::is_array) {
        return Some(at);
    }
    obj.iter().find_map(|(k, child)| {
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        match child {
            Value::Object(_) => find_pod_spec(child, path),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| find_pod_spec(item, format!("{path}[{i}]"))),
            _ => None,
        }
    })
}

/// Whether the pod template's metadata carries [`ISOLATED_ANNOTATION`].
fn annotation(v: &Value, meta_parent: &[&str]) -> bool {
    let mut at = v;
    for key in meta_parent {
        match at.get(*key) {
            Some(next) => at = next,
            None => return false,
        }
    }
    at.pointer("/metadata/annotations")
        .and_then(|a| a.get(ISOLATED_ANNOTATION))
        .is_some()
}

/// Adds or removes [`ISOLATED_ANNOTATION`], dropping maps it leaves empty.
fn set_annotation(v: &mut Value, meta_parent: &[&str], on: bool) {
    let Some(parent) = pointer_mut(v, meta_parent).and_then(Value::as_object_mut) else {
        return;
    };
    if on {
        let meta = parent
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(ISOLATED_ANNOTATION.to_owned(), Value::from("true"));
            }
        }
        return;
    }
    if let Some(meta) = parent.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.shift_remove(ISOLATED_ANNOTATION);
            if a.is_empty() {
                meta.shift_remove("annotations");
            }
        }
        if meta.is_empty() {
            parent.shift_remove("metadata");
        }
    }
}

/// Where the sidecar was: list and index, to put it back at the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    None,
    Init(usize),
    Regular(usize),
}

/// Removes everything inject adds: the container (from either list), its volume, the
/// app containers' variable, and `automountServiceAccountToken: false` if inject set it.
fn remove(spec: &mut Map<String, Value>, opts: &Options, isolated: bool) -> Position {
    let mut position = Position::None;
    for (list, make) in [
        ("initContainers", Position::Init as fn(usize) -> Position),
        ("containers", Position::Regular),
    ] {
        if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
            if let Some(i) = items.iter().position(is_ours) {
                items.remove(i);
                position = make(i);
            }
            if items.is_empty() && list == "initContainers" {
                spec.shift_remove(list);
            }
        }
    }
    if position == Position::None {
        return position;
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        volumes.retain(|v| v.get("name").and_then(Value::as_str) != Some(VOLUME));
        if volumes.is_empty() {
            spec.shift_remove("volumes");
        }
    }
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                env.retain(|e| e.get("name").and_then(Value::as_str) != Some(&opts.env_name));
                if env.is_empty() {
                    c.shift_remove("env");
                }
            }
        }
    }
    if isolated {
        spec.shift_remove("automountServiceAccountToken");
    }
    position
}

fn is_ours(c: &Value) -> bool {
    c.get("name").and_then(Value::as_str) == Some(CONTAINER)
}

/// Refuses a pod whose containers already use the proxy's or the admin port: they share
/// one network namespace.
fn check_ports(spec: &Map<String, Value>, opts: &Options) -> Result<(), (String, String)> {
    for list in ["initContainers", "containers"] {
        let Some(items) = spec.get(list).and_then(Value::as_array) else {
            continue;
        };
        for (i, c) in items.iter().enumerate() {
            let Some(ports) = c.get("ports").and_then(Value::as_array) else {
                continue;
            };
            for (j, p) in ports.iter().enumerate() {
                let port = p.get("containerPort").and_then(Value::as_u64);
                for (ours, flag) in [
                    (opts.proxy_port, "--proxy-port"),
                    (opts.admin_port, "--admin-port"),
                ] {
                    if port == Some(u64::from(ours)) {
                        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                        return Err((
                            format!("{list}[{i}].ports[{j}].containerPort"),
                            format!(
                                "port {ours} is already used by container {name:?}, and the \
                                 sidecar needs it (containers share the pod's network); \
                                 choose another with {flag}"
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Adds the sidecar at `position` (or first among init containers / last among
/// containers), its volume, and the variable. Returns whether inject set
/// `automountServiceAccountToken: false` (to be recorded).
fn add(
    spec: &mut Map<String, Value>,
    opts: &Options,
    position: Position,
) -> Result<bool, (String, String)> {
    let automount_off = spec.get("automountServiceAccountToken") == Some(&Value::Bool(false));
    if automount_off && !opts.isolate_token {
        return Err((
            "automountServiceAccountToken".to_owned(),
            "is false, so the sidecar would have no service-account token; pass \
             --isolate-token, which mounts one into the sidecar alone"
                .to_owned(),
        ));
    }
    let apps = spec
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| {
            (
                "containers".to_owned(),
                "missing: a pod needs containers".to_owned(),
            )
        })?;
    let url = format!("http://127.0.0.1:{}", opts.proxy_port);
    for c in apps.iter_mut().filter_map(Value::as_object_mut) {
        let env = c.entry("env").or_insert_with(|| Value::Array(Vec::new()));
        if let Some(env) = env.as_array_mut() {
            env.push(json!({ "name": opts.env_name, "value": url }));
        }
    }
    let container = sidecar(opts);
    if opts.classic {
        let at = match position {
            Position::Regular(i) => i.min(apps.len()),
            _ => apps.len(),
        };
        apps.insert(at, container);
    } else {
        let init = spec
            .entry("initContainers")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(init) = init.as_array_mut() else {
            return Err(("initContainers".to_owned(), "not a list".to_owned()));
        };
        // First: later init containers can then use the API through it too.
        let at = match position {
            Position::Init(i) => i.min(init.len()),
            _ => 0,
        };
        init.insert(at, container);
    }
    if !opts.isolate_token {
        return Ok(false);
    }
    let volumes = spec
        .entry("volumes")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(volumes) = volumes.as_array_mut() {
        volumes.push(token_volume());
    }
    let set = !automount_off;
    spec.insert(
        "automountServiceAccountToken".to_owned(),
        Value::Bool(false),
    );
    Ok(set)
}

/// The sidecar, as in manifests/native-sidecar.yaml.
fn sidecar(opts: &Options) -> Value {
    let mut args = Vec::new();
    if opts.proxy_port != crate::cli::DEFAULT_PORT {
        args.push(format!("--port={}", opts.proxy_port));
    }
    args.extend([
        format!("--admin-address=0.0.0.0:{}", opts.admin_port),
        "--log-format=json".to_owned(),
        "--shutdown-delay=5s".to_owned(),
        "--shutdown-grace=20s".to_owned(),
    ]);
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": { "path": path, "port": ADMIN_PORT_NAME },
            "periodSeconds": period,
            "failureThreshold": failures,
        })
    };
    let mut c = Map::new();
    c.insert("name".into(), CONTAINER.into());
    c.insert("image".into(), opts.image.clone().into());
    c.insert("imagePullPolicy".into(), "IfNotPresent".into());
    if !opts.classic {
        // What makes an init container a sidecar: started first, stopped last.
        c.insert("restartPolicy".into(), "Always".into());
    }
    c.insert("args".into(), args.into());
    c.insert(
        "ports".into(),
        json!([{ "name": ADMIN_PORT_NAME, "containerPort": opts.admin_port, "protocol": "TCP" }]),
    );
    // Up to 60 s for credentials to load and the listener to bind; a native sidecar's
    // startup probe holds the app back until then.
    c.insert("startupProbe".into(), probe("/readyz", 1, 60));
    c.insert("readinessProbe".into(), probe("/readyz", 5, 3));
    c.insert("livenessProbe".into(), probe("/healthz", 10, 3));
    // The README's "Resource usage" figures; the CPU limit is a ceiling for TLS bursts.
    c.insert(
        "resources".into(),
        json!({
            "requests": { "cpu": "10m", "memory": "16Mi" },
            "limits": { "cpu": "500m", "memory": "64Mi" },
        }),
    );
    if opts.isolate_token {
        c.insert(
            "volumeMounts".into(),
            json!([{ "name": VOLUME, "mountPath": SA_DIR, "readOnly": true }]),
        );
    }
    c.insert(
        "securityContext".into(),
        json!({
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        }),
    );
    Value::Object(c)
}

/// What `automountServiceAccountToken` would mount, but short-lived (600 s, the minimum;
/// the kubelet renews it at 80% and the proxy re-reads it).
fn token_volume() -> Value {
    json!({
        "name": VOLUME,
        "projected": {
            "sources": [
                { "serviceAccountToken": { "path": "token", "expirationSeconds": 600 } },
                { "configMap": {
                    "name": "kube-root-ca.crt",
                    "items": [{ "key": "ca.crt", "path": "ca.crt" }],
                } },
                { "downwardAPI": {
                    "items": [{
                        "path": "namespace",
                        "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" },
                    }],
                } },
            ],
        },
    })
}
