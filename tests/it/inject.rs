//! `kube-ambassador inject` through the real binary: one golden file per kind (and a
//! `kubectl get -o json` List, and an update of an older injection), each injected again
//! to show it is idempotent and uninjected to show it comes out whole; errors name the
//! document and the field. `UPDATE_GOLDEN=1 cargo test --test it inject::` rewrites the
//! golden files (then review the diff). .ci/deploy-checks.sh validates every golden
//! output with kubernetes-validate --strict and checkov, as it does manifests/; here
//! `kubectl apply --dry-run=client` reads each (where kubectl is installed; under `CI` it
//! must be).

use crate::support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_kube-ambassador");

/// Input file (tests/inject/), flags, golden output (tests/inject/out/).
const CASES: &[(&str, &[&str], &str)] = &[
    ("pod.yaml", &[], "pod.yaml"),
    (
        "deployment.yaml",
        &["--isolate-token"],
        "deployment.isolated.yaml",
    ),
    ("statefulset.yaml", &[], "statefulset.yaml"),
    ("daemonset.yaml", &["--classic"], "daemonset.classic.yaml"),
    (
        "replicaset.yaml",
        &["--env=API_URL", "--proxy-port=9001", "--admin-port=9002"],
        "replicaset.ports.yaml",
    ),
    ("job.yaml", &["--isolate-token"], "job.isolated.yaml"),
    ("cronjob.yaml", &[], "cronjob.yaml"),
    (
        "replicationcontroller.yaml",
        &["--classic"],
        "replicationcontroller.classic.yaml",
    ),
    ("list.json", &[], "list.json"),
    (
        "upgrade.yaml",
        &["--image=kube-ambassador:0.2.0"],
        "upgrade.yaml",
    ),
    ("networkpolicy.yaml", &[], "networkpolicy.yaml"),
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject")
}

/// Runs `kube-ambassador inject ARGS` with `input` on stdin: (exit code, stdout, stderr).
fn inject(args: &[&str], input: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kube-ambassador inject");
    let mut stdin = child.stdin.take().expect("stdin");
    let text = input.to_owned();
    // A writer thread: a large input must not dead-lock against a full stdout pipe.
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().expect("wait for inject");
    writer.join().expect("writer").expect("write stdin");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str], input: &str) -> String {
    let (code, stdout, stderr) = inject(args, input);
    assert_eq!(code, Some(0), "inject {args:?} failed:\n{stderr}");
    assert_eq!(stderr, "", "inject {args:?} wrote to stderr");
    stdout
}

#[test]
fn every_kind_matches_its_golden_file_is_idempotent_and_uninjects_whole() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (input, args, golden) in CASES {
        let text = std::fs::read_to_string(dir().join(input)).expect("read input");
        let out = ok(args, &text);
        let golden_path = dir().join("out").join(golden);
        if update {
            std::fs::create_dir_all(dir().join("out")).unwrap();
            std::fs::write(&golden_path, &out).unwrap();
        }
        let want = std::fs::read_to_string(&golden_path).unwrap_or_default();
        if out != want {
            failures.push(format!(
                "{input} {args:?}: output differs from out/{golden} (UPDATE_GOLDEN=1 to rewrite)"
            ));
            continue;
        }
        if ok(args, &out) != out {
            failures.push(format!(
                "{input} {args:?}: injecting twice changes the output"
            ));
        }
        let mut un: Vec<&str> = vec!["--uninject"];
        un.extend(args.iter().filter(|a| a.starts_with("--env=")));
        if ok(&un, &out) != ok(&un, &text) {
            failures.push(format!(
                "{input} {args:?}: --uninject leaves something behind"
            ));
        }
        if ok(&un, &out).contains("kube-ambassador") && !input.starts_with("upgrade") {
            failures.push(format!(
                "{input} {args:?}: --uninject left kube-ambassador in"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_file_argument_reads_the_file_and_json_in_gives_json_out() {
    let path = dir().join("list.json");
    let (code, stdout, stderr) = {
        let out = Command::new(BIN)
            .args(["inject", "-f"])
            .arg(&path)
            .output()
            .expect("run inject");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON out");
    assert_eq!(v["kind"], "List");
    assert_eq!(
        v["items"][0]["spec"]["template"]["spec"]["initContainers"][0]["restartPolicy"],
        "Always"
    );
    assert_eq!(
        v["items"][1]["kind"], "Service",
        "other objects pass through"
    );
    let missing = dir().join("no-such-file.yaml");
    let out = Command::new(BIN)
        .args(["inject", "-f"])
        .arg(&missing)
        .output()
        .expect("run inject");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: cannot read {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}

/// A minimal pod template document of `kind`, with `extra` lines under its pod spec.
fn deployment(spec_extra: &str, container_extra: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    \
         matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    \
         spec:\n{spec_extra}      containers:\n      - name: app\n        image: web:1\n\
         {container_extra}"
    )
}

fn fails(args: &[&str], input: &str) -> String {
    let (code, stdout, stderr) = inject(args, input);
    assert_eq!(code, Some(1), "inject {args:?} succeeded:\n{stdout}");
    assert_eq!(stdout, "", "nothing on stdout on failure");
    stderr
}

#[test]
fn errors_name_the_document_and_the_field() {
    let service =
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n---\n";
    let busy = format!(
        "{service}{}",
        deployment(
            "",
            "        ports:\n        - containerPort: 8080\n        - containerPort: 8001\n"
        )
    );
    assert_eq!(
        fails(&[], &busy),
        "error: document 2 (Deployment web), spec.template.spec.containers[0].ports[1].\
         containerPort: port 8001 is already used by container \"app\", and the sidecar needs \
         it (containers share the pod's network); choose another with --proxy-port\n"
    );
    assert_eq!(
        fails(
            &[],
            &deployment("      automountServiceAccountToken: false\n", "")
        ),
        "error: document 1 (Deployment web), spec.template.spec.automountServiceAccountToken: \
         is false, so the sidecar would have no service-account token; pass --isolate-token, \
         which mounts one into the sidecar alone\n"
    );
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    \
               spec:\n      restartPolicy: Never\n      containers: [{name: a, image: a:1}]\n";
    assert_eq!(
        fails(&["--classic"], job),
        "error: document 1 (Job j), spec.template.spec: a regular-container sidecar \
         (--classic) never exits, so the Job would never complete; use the native sidecar \
         (Kubernetes >= 1.29), which stops with the Job\n"
    );
    let rollout = "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: r}\nspec:\n  \
                   strategy: {canary: {}}\n  workload:\n    template:\n      spec:\n        \
                   containers: [{name: a, image: a:1}]\n";
    assert_eq!(
        fails(&[], rollout),
        "error: document 1 (Rollout r), spec.workload.template.spec: kind \"Rollout\" holds a \
         pod template here, and inject knows only Pod, Deployment, StatefulSet, DaemonSet, \
         ReplicaSet, Job, CronJob, ReplicationController and PodTemplate; add the sidecar to \
         it by hand (see manifests/deployment.yaml) or leave this document out\n"
    );
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}",
        deployment("", "        ports: [{containerPort: 8002}]\n").replace('\n', "\n  ")
    );
    assert!(
        fails(&[], &list).starts_with(
            "error: document 1 (Deployment web), items[0].spec.template.spec.containers[0].\
             ports[0].containerPort: port 8002 is already used by container \"app\""
        ),
        "{}",
        fails(&[], &list)
    );
    assert!(
        fails(&[], "a: [unclosed\n").starts_with("error: cannot parse the input as YAML: "),
        "{}",
        fails(&[], "a: [unclosed\n")
    );
}

#[test]
fn the_proxy_flags_still_work_without_a_subcommand_but_not_before_one() {
    let out = Command::new(BIN)
        .args(["--port=9", "inject"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = Command::new(BIN)
        .args(["inject", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--filename",
        "--image",
        "--classic",
        "--isolate-token",
        "--env",
        "--uninject",
    ] {
        assert!(help.contains(flag), "inject --help lacks {flag}:\n{help}");
    }
}

/// The README's `manifests/` table (under "Deploy") names every file there.
#[test]
fn the_readme_manifests_table_lists_every_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let deploy = &readme[readme.find("\n## Deploy\n").expect("a Deploy section")..];
    let table: String = deploy
        .lines()
        .skip_while(|l| !l.starts_with("| file | what |"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap_or("").to_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut files = Vec::new();
    let mut dirs = vec![root.join("manifests")];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read manifests/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root.join("manifests")).unwrap();
                files.push(rel.display().to_string());
            }
        }
    }
    files.sort();
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !table.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "the README's manifests table lacks {missing:?}"
    );
}

/// A stand-in for an API server's discovery, enough for `kubectl apply --dry-run=client`
/// to map each golden kind to its resource: legacy discovery documents for the groups
/// the golden files use, and 404 for every object (so kubectl takes its "create" path).
/// Schema validation is kubernetes-validate's (in CI): this checks what only kubectl
/// can, that it reads our YAML and JSON and knows every object in it.
fn discovery_stub() -> std::net::SocketAddr {
    use std::io::{BufRead as _, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the stub");
    let addr = listener.local_addr().expect("stub address");
    let resource = |name: &str, kind: &str| {
        serde_json::json!({
            "name": name, "singularName": kind.to_lowercase(), "namespaced": true, "kind": kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        })
    };
    let list = move |gv: &str, items: &[(&str, &str)]| {
        serde_json::json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": items.iter().map(|(n, k)| resource(n, k)).collect::<Vec<_>>(),
        })
        .to_string()
    };
    let group = |name: &str| {
        serde_json::json!({
            "name": name,
            "versions": [{"groupVersion": format!("{name}/v1"), "version": "v1"}],
            "preferredVersion": {"groupVersion": format!("{name}/v1"), "version": "v1"},
        })
    };
    let routes: Vec<(&'static str, String)> = vec![
        (
            "/api",
            serde_json::json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
            .to_string(),
        ),
        (
            "/apis",
            serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [group("apps"), group("batch"), group("networking.k8s.io")]})
            .to_string(),
        ),
        (
            "/api/v1",
            list(
                "v1",
                &[
                    ("pods", "Pod"),
                    ("replicationcontrollers", "ReplicationController"),
                    ("services", "Service"),
                    ("configmaps", "ConfigMap"),
                    ("podtemplates", "PodTemplate"),
                ],
            ),
        ),
        (
            "/apis/apps/v1",
            list(
                "apps/v1",
                &[
                    ("deployments", "Deployment"),
                    ("statefulsets", "StatefulSet"),
                    ("daemonsets", "DaemonSet"),
                    ("replicasets", "ReplicaSet"),
                ],
            ),
        ),
        (
            "/apis/batch/v1",
            list("batch/v1", &[("jobs", "Job"), ("cronjobs", "CronJob")]),
        ),
        (
            "/apis/networking.k8s.io/v1",
            list("networking.k8s.io/v1", &[("networkpolicies", "NetworkPolicy")]),
        ),
    ];
    let routes = std::sync::Arc::new(routes);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let routes = routes.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone the socket"));
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                    }
                    let target = request_line.split(' ').nth(1).unwrap_or("/");
                    let path = target.split('?').next().unwrap_or("/");
                    let (code, body) = match routes.iter().find(|(p, _)| *p == path) {
                        Some((_, body)) => ("200 OK", body.clone()),
                        None => (
                            "404 Not Found",
                            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"not found","reason":"NotFound","code":404}"#
                                .to_owned(),
                        ),
                    };
                    let head = format!(
                        "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if conn.write_all(head.as_bytes()).is_err()
                        || conn.write_all(body.as_bytes()).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn kubectl_apply_dry_run_accepts_every_golden_output() {
    let Some(kubectl) = support::kubectl("kubectl apply --dry-run=client on the inject outputs")
    else {
        return;
    };
    let server = discovery_stub();
    let scratch = std::env::temp_dir().join(format!("ka-inject-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let kubeconfig = scratch.join("empty-kubeconfig");
    std::fs::write(&kubeconfig, "").unwrap();
    let mut failures = Vec::new();
    for (_, _, golden) in CASES {
        let path = dir().join("out").join(golden);
        let out = Command::new(&kubectl)
            .arg(format!("--server=http://{server}"))
            .arg(format!("--cache-dir={}", scratch.join("cache").display()))
            .args([
                "--request-timeout=20s",
                "apply",
                "--dry-run=client",
                "--validate=false",
            ])
            .arg("-f")
            .arg(&path)
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &scratch)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .output()
            .expect("run kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("created (dry run)") {
            failures.push(format!(
                "{golden}: kubectl apply --dry-run=client: {}\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
