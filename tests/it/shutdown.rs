//! Graceful shutdown through the real binary: SIGTERM lets a request in flight finish and
//! exits 0; during `--shutdown-delay` new requests are still served and a second signal
//! exits at once; open watches end cleanly; SIGINT skips the delay; a signal sent as soon
//! as the start-up line is read is handled, not fatal.

use crate::support;

use std::os::unix::process::ExitStatusExt as _;

use support::client;
use support::{FakeApi, Proxy, World, within};

const TOKEN: &str = "shutdown-sa-token";
const PODS: &str = "/api/v1/namespaces/default/pods";

async fn setup(extra_args: &[&str]) -> (FakeApi, World, Proxy) {
    support::in_cluster_setup(TOKEN, extra_args).await
}

/// The exit status as a readable string (code or signal), for assertion messages.
fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{status:?}"),
    }
}

#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish_with_200_and_exits_0() {
    let (api, _world, mut proxy) = setup(&["--shutdown-delay=0s"]).await;
    let url = proxy.url("/hold/in-flight");
    let request = tokio::spawn(async move { client::get(&url).await });
    api.wait_held("in-flight").await;

    proxy.signal("TERM");
    proxy.wait_stderr("shutting down: no new connections").await;
    assert!(
        proxy.try_status().is_none(),
        "exited with a request in flight"
    );
    api.release("in-flight");

    let resp = within("the held request", request).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["held"], "in-flight");
    let status = proxy.wait().await;
    assert!(status.success(), "{}\n{}", describe(status), proxy.stderr());
}

#[tokio::test]
async fn during_the_shutdown_delay_new_requests_are_served_and_a_second_signal_exits_at_once() {
    let (_api, _world, mut proxy) = setup(&["--shutdown-delay=60s"]).await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);

    proxy.signal("TERM");
    proxy.wait_stderr("still serving for 60s").await;
    // A new connection and request, after SIGTERM.
    let resp = client::get(&proxy.url(PODS)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["kind"], "PodList");
    assert!(proxy.try_status().is_none());

    proxy.signal("TERM");
    // `wait` gives up after 30 s, well before the 60 s delay would end.
    let status = proxy.wait().await;
    assert!(
        !status.success() && status.code().is_some(),
        "{}\n{}",
        describe(status),
        proxy.stderr()
    );
    assert!(
        proxy.stderr().contains("second signal"),
        "{}",
        proxy.stderr()
    );
}

#[tokio::test]
async fn an_open_watch_is_ended_cleanly_at_shutdown_and_the_process_exits_0() {
    let (api, _world, mut proxy) = setup(&["--shutdown-delay=0s"]).await;
    let mut watch = client::get_stream(&proxy.url(&format!("{PODS}?watch=1")), &[]).await;
    assert_eq!(watch.status, 200);
    for i in 0..3 {
        let event = within("an initial watch event", watch.next_json())
            .await
            .expect("an initial ADDED event");
        assert_eq!(event["type"], "ADDED");
        assert_eq!(event["object"]["metadata"]["name"], format!("pod-{i}"));
    }
    api.wait_open_watches(1).await;

    proxy.signal("TERM");
    let rest = within("the watch to end", async {
        let mut rest = Vec::new();
        while let Some(line) = watch.next_line().await {
            rest.push(line);
        }
        rest
    })
    .await;
    assert!(rest.is_empty(), "unexpected watch lines: {rest:?}");
    assert_eq!(watch.error, None, "the watch ended with an error");
    let status = proxy.wait().await;
    assert!(status.success(), "{}\n{}", describe(status), proxy.stderr());
    // The proxy's upstream watch was closed too.
    api.wait_open_watches(0).await;
}

#[tokio::test]
async fn sigint_skips_the_shutdown_delay_and_exits_0() {
    let (_api, _world, mut proxy) = setup(&["--shutdown-delay=60s"]).await;
    assert_eq!(client::get(&proxy.url(PODS)).await.status, 200);
    proxy.signal("INT");
    // `wait` gives up after 30 s: only an exit that skipped the 60 s delay passes.
    let status = proxy.wait().await;
    assert!(status.success(), "{}\n{}", describe(status), proxy.stderr());
    assert!(
        !proxy.stderr().contains("still serving"),
        "{}",
        proxy.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_sent_as_soon_as_the_start_up_line_is_read_shuts_down_cleanly() {
    // Scripts signal the proxy as soon as it announces itself; the handlers must already
    // be in place then, or the signal's default action kills the process. (Installed
    // after the line, some of these twenty would die of SIGINT.)
    let runs = (0..4).map(|_| {
        tokio::spawn(async {
            for _ in 0..5 {
                let (_api, _world, mut proxy) = setup(&[]).await;
                proxy.signal("INT");
                let status = proxy.wait().await;
                assert!(status.success(), "{}\n{}", describe(status), proxy.stderr());
                assert!(proxy.stderr().contains("stopped"), "{}", proxy.stderr());
            }
        })
    });
    for run in runs.collect::<Vec<_>>() {
        run.await.unwrap();
    }
}
