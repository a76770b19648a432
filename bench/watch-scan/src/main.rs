//! Per-event cost of the watch scanner (`src/watch/scan.rs`, included as is): a realistic
//! Pod MODIFIED event (kubectl's JSON of a running pod, managedFields included: 4.4 KB),
//! each in a chunk of its own as the API server writes it, or split in two.
//!
//! `cargo run --release -- N` prints ns/event; under callgrind, the difference between two
//! N gives instructions per event:
//! `valgrind --tool=callgrind target/release/watch-scan 20000` minus the same at 10000.

#[allow(dead_code)]
#[path = "../../../src/watch/scan.rs"]
mod scan;

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

const POD: &str = r#"{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-7f9c8d6b5-x2k4q","generateName":"web-7f9c8d6b5-","namespace":"shop","uid":"8d2c4a1e-6b3f-4c9d-9e7a-2f1b5c8d3e6a","resourceVersion":"RV","creationTimestamp":"2026-11-30T09:14:02Z","labels":{"app":"web","pod-template-hash":"7f9c8d6b5","tier":"frontend"},"annotations":{"kubectl.kubernetes.io/restartedAt":"2026-11-30T09:13:58Z","prometheus.io/port":"9090","prometheus.io/scrape":"true"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7f9c8d6b5","uid":"1c3e5a7b-9d2f-4b6e-8a1c-3e5f7a9b1d2c","controller":true,"blockOwnerDeletion":true}],"managedFields":[{"manager":"kube-controller-manager","operation":"Update","apiVersion":"v1","time":"2026-11-30T09:14:02Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:annotations":{".":{},"f:kubectl.kubernetes.io/restartedAt":{},"f:prometheus.io/port":{},"f:prometheus.io/scrape":{}},"f:generateName":{},"f:labels":{".":{},"f:app":{},"f:pod-template-hash":{},"f:tier":{}},"f:ownerReferences":{".":{},"k:{\"uid\":\"1c3e5a7b-9d2f-4b6e-8a1c-3e5f7a9b1d2c\"}":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"web\"}":{".":{},"f:image":{},"f:imagePullPolicy":{},"f:name":{},"f:ports":{".":{},"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{},"f:name":{},"f:protocol":{}}},"f:readinessProbe":{".":{},"f:httpGet":{".":{},"f:path":{},"f:port":{},"f:scheme":{}},"f:periodSeconds":{}},"f:resources":{".":{},"f:limits":{".":{},"f:memory":{}},"f:requests":{".":{},"f:cpu":{},"f:memory":{}}}}},"f:dnsPolicy":{},"f:enableServiceLinks":{},"f:restartPolicy":{},"f:schedulerName":{},"f:securityContext":{},"f:terminationGracePeriodSeconds":{}}}},{"manager":"kubelet","operation":"Update","apiVersion":"v1","time":"2026-11-30T09:14:09Z","fieldsType":"FieldsV1","fieldsV1":{"f:status":{"f:conditions":{"k:{\"type\":\"ContainersReady\"}":{".":{},"f:lastProbeTime":{},"f:lastTransitionTime":{},"f:status":{},"f:type":{}},"k:{\"type\":\"Initialized\"}":{".":{},"f:lastProbeTime":{},"f:lastTransitionTime":{},"f:status":{},"f:type":{}},"k:{\"type\":\"Ready\"}":{".":{},"f:lastProbeTime":{},"f:lastTransitionTime":{},"f:status":{},"f:type":{}}},"f:containerStatuses":{},"f:hostIP":{},"f:phase":{},"f:podIP":{},"f:podIPs":{".":{},"k:{\"ip\":\"10.244.1.17\"}":{".":{},"f:ip":{}}},"f:startTime":{}}},"subresource":"status"}]},"spec":{"volumes":[{"name":"kube-api-access-7xq2m","projected":{"sources":[{"serviceAccountToken":{"expirationSeconds":3607,"path":"token"}},{"configMap":{"name":"kube-root-ca.crt","items":[{"key":"ca.crt","path":"ca.crt"}]}},{"downwardAPI":{"items":[{"path":"namespace","fieldRef":{"apiVersion":"v1","fieldPath":"metadata.namespace"}}]}}],"defaultMode":420}}],"containers":[{"name":"web","image":"registry.example/shop/web:2.14.1","ports":[{"name":"http","containerPort":8080,"protocol":"TCP"}],"resources":{"limits":{"memory":"256Mi"},"requests":{"cpu":"100m","memory":"128Mi"}},"volumeMounts":[{"name":"kube-api-access-7xq2m","readOnly":true,"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}],"readinessProbe":{"httpGet":{"path":"/healthz","port":8080,"scheme":"HTTP"},"timeoutSeconds":1,"periodSeconds":5,"successThreshold":1,"failureThreshold":3},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent"}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","serviceAccount":"default","nodeName":"node-3","securityContext":{},"schedulerName":"default-scheduler","tolerations":[{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300},{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}],"priority":0,"enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority"},"status":{"phase":"Running","conditions":[{"type":"Initialized","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-11-30T09:14:02Z"},{"type":"Ready","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-11-30T09:14:09Z"},{"type":"ContainersReady","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-11-30T09:14:09Z"},{"type":"PodScheduled","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-11-30T09:14:02Z"}],"hostIP":"172.18.0.4","hostIPs":[{"ip":"172.18.0.4"}],"podIP":"10.244.1.17","podIPs":[{"ip":"10.244.1.17"}],"startTime":"2026-11-30T09:14:02Z","containerStatuses":[{"name":"web","state":{"running":{"startedAt":"2026-11-30T09:14:05Z"}},"lastState":{},"ready":true,"restartCount":0,"image":"registry.example/shop/web:2.14.1","imageID":"registry.example/shop/web@sha256:4f1c2b3a5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081","containerID":"containerd://9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b","started":true}],"qosClass":"Burstable"}}}"#;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let split = std::env::args().nth(2).as_deref() == Some("split");
    let events: Vec<Bytes> = (0..1000)
        .map(|i| Bytes::from(POD.replace("\"RV\"", &format!("\"{}\"", 100_000 + i)) + "\n"))
        .collect();
    let len = events[0].len();
    let mut scanner = scan::Scanner::new(Some("1"));
    let mut out = VecDeque::new();
    let mut delivered = 0usize;
    let start = Instant::now();
    for i in 0..n {
        let ev = &events[i % events.len()];
        if split {
            scanner.feed(ev.slice(..len / 2), false, &mut out);
            scanner.feed(ev.slice(len / 2..), false, &mut out);
        } else {
            scanner.feed(ev.clone(), false, &mut out);
        }
        delivered += out.drain(..).map(|b| b.len()).sum::<usize>();
    }
    let took = start.elapsed();
    assert_eq!(delivered, n * len, "every byte passed on");
    assert!(scanner.resumable());
    println!(
        "{n} events of {len} bytes{}: {:.0} ns/event, last resourceVersion {}",
        if split { " (split in two chunks)" } else { "" },
        took.as_nanos() as f64 / n as f64,
        scanner.rv
    );
}
