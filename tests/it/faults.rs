//! Fault injection under load through the real binary: a paced request loop (~200
//! requests/s from a few workers, GETs of the pods list and of `/echo`) runs while the
//! token rotates, the CA rotates, the API server restarts or the proxy gets SIGTERM, and
//! every request is accounted for: none that could have succeeded is lost, every failure
//! is one the fault explains and has the shape it should (a `Status` JSON, or a refused
//! connection), and none hangs.
//!
//! Phases are marked by the test at events it awaits (a log line, a request at the fake API,
//! `stop()`/`restart()` returning); each request records the phase it started and ended in,
//! so assertions never depend on how long anything took.

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::client::{self, BoxError};
use support::{FakeApi, FakeApiOptions, Pki, Proxy, WAIT, World, within};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const PODS: &str = "/api/v1/namespaces/default/pods";
/// Concurrent workers of the load loop.
const WORKERS: usize = 4;
/// Each worker's pace: 4 workers every 20 ms is 200 requests/s.
const PACE: Duration = Duration::from_millis(20);
/// A bound on each worker's loop (60 s at its pace), so it ends even if nobody stops it.
const MAX_PER_WORKER: usize = 3_000;

/// How one request of the load loop ended. (The texts are read through `Debug`, in
/// failure messages.)
#[derive(Debug, Clone)]
#[allow(dead_code)]
enum Outcome {
    /// A complete response.
    Answered { status: u16, body: String },
    /// The TCP connection to the proxy was refused.
    Refused,
    /// The connection was accepted, then closed or reset before any response byte.
    Closed(String),
    /// Bytes came back that are not an HTTP response.
    Garbage(String),
    /// Any other error.
    Other(String),
    /// No answer within [`WAIT`].
    Hung,
}

impl Outcome {
    fn is_ok(&self) -> bool {
        matches!(self, Outcome::Answered { status: 200, .. })
    }

    /// The body as JSON, for answered requests whose body is JSON.
    fn json(&self) -> Option<Value> {
        match self {
            Outcome::Answered { body, .. } => serde_json::from_str(body).ok(),
            _ => None,
        }
    }

    /// The token `/echo` reports the fake API received.
    fn echoed_token(&self) -> Option<String> {
        self.json()?["token"].as_str().map(str::to_owned)
    }

    /// Whether this is one of the proxy's own failures: a `Status` JSON with `code`.
    fn is_status(&self, code: u16) -> bool {
        let Outcome::Answered { status, .. } = self else {
            return false;
        };
        let Some(json) = self.json() else {
            return false;
        };
        *status == code
            && json["kind"] == "Status"
            && json["status"] == "Failure"
            && json["code"] == code
    }
}

/// One request of the load loop.
#[derive(Debug, Clone)]
struct Record {
    path: String,
    /// Tickets from one counter shared by all workers, taken when the request started and
    /// when it ended: `a.end < b.start` means `a` ended before `b` was sent.
    start: u64,
    end: u64,
    /// The test's phase when the request started and when it ended.
    phase_start: u64,
    phase_end: u64,
    outcome: Outcome,
}

/// Sorts a request error into the outcomes a fault may or may not explain.
fn classify(e: &BoxError) -> Outcome {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    let text = e.to_string();
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() {
                return Outcome::Garbage(text);
            }
            if h.is_incomplete_message() {
                return Outcome::Closed(text);
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return Outcome::Refused,
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    return Outcome::Closed(text);
                }
                _ => {}
            }
        }
        source = err.source();
    }
    Outcome::Other(text)
}

/// The paced request loop.
struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU64>,
    records: Arc<Mutex<Vec<Record>>>,
    /// Bumped whenever a request ends, so waiters re-check their condition.
    progress: watch::Sender<u64>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(proxy: &Proxy) -> Load {
        let base = proxy.url("");
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU64::new(0));
        let tickets = Arc::new(AtomicU64::new(0));
        let records = Arc::new(Mutex::new(Vec::new()));
        let progress = watch::Sender::new(0);
        let workers = (0..WORKERS)
            .map(|w| {
                let (base, stop, phase, tickets, records, progress) = (
                    base.clone(),
                    stop.clone(),
                    phase.clone(),
                    tickets.clone(),
                    records.clone(),
                    progress.clone(),
                );
                tokio::spawn(async move {
                    // Paces the load (a fixed rate), it synchronises nothing.
                    let mut pace = tokio::time::interval(PACE);
                    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    for n in 0..MAX_PER_WORKER {
                        pace.tick().await;
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let path = if n % 2 == 0 {
                            PODS.to_owned()
                        } else {
                            format!("/echo/faults/w{w}-{n}")
                        };
                        let url = format!("{}{}", base.trim_end_matches('/'), path);
                        let start = tickets.fetch_add(1, Ordering::SeqCst);
                        let phase_start = phase.load(Ordering::SeqCst);
                        let sent = client::try_send("GET", &url, &[], "");
                        let outcome = match tokio::time::timeout(WAIT, sent).await {
                            Err(_) => Outcome::Hung,
                            Ok(Ok(resp)) => Outcome::Answered {
                                status: resp.status.as_u16(),
                                body: resp.text(),
                            },
                            Ok(Err(e)) => classify(&e),
                        };
                        let phase_end = phase.load(Ordering::SeqCst);
                        let end = tickets.fetch_add(1, Ordering::SeqCst);
                        records.lock().unwrap().push(Record {
                            path,
                            start,
                            end,
                            phase_start,
                            phase_end,
                            outcome,
                        });
                        progress.send_modify(|p| *p += 1);
                    }
                })
            })
            .collect();
        Load {
            stop,
            phase,
            records,
            progress,
            workers,
        }
    }

    /// Requests sent from now on record `phase` (phases only grow).
    fn set_phase(&self, phase: u64) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    /// Waits (bounded by [`WAIT`]) until `cond` holds, re-checking whenever a request ends.
    async fn until(&self, what: &str, cond: impl Fn(&[Record]) -> bool) {
        let mut rx = self.progress.subscribe();
        within(what, async {
            loop {
                rx.borrow_and_update();
                if cond(&self.records.lock().unwrap()) {
                    return;
                }
                rx.changed().await.expect("progress sender lives in self");
            }
        })
        .await
    }

    /// Waits until `n` requests sent in `phase` or later have ended.
    async fn until_done_since(&self, phase: u64, n: usize) {
        self.until(&format!("{n} requests sent in phase {phase}"), |r| {
            r.iter().filter(|r| r.phase_start >= phase).count() >= n
        })
        .await
    }

    /// Stops the loop and returns every request, in the order they were sent.
    async fn finish(self) -> Vec<Record> {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            within("a load worker to stop", w)
                .await
                .expect("load worker");
        }
        let mut records = std::mem::take(&mut *self.records.lock().unwrap());
        records.sort_by_key(|r| r.start);
        records
    }
}

fn count(records: &[Record], pred: impl Fn(&Record) -> bool) -> usize {
    records.iter().filter(|r| pred(r)).count()
}

/// At most a few failures, printed for the assertion message.
fn sample<'a>(records: impl IntoIterator<Item = &'a Record>) -> String {
    let all: Vec<_> = records.into_iter().collect();
    let shown: Vec<String> = all
        .iter()
        .take(5)
        .map(|r| {
            format!(
                "{} (phase {}..{}): {:?}",
                r.path, r.phase_start, r.phase_end, r.outcome
            )
        })
        .collect();
    format!("{} request(s), e.g.\n{}", all.len(), shown.join("\n"))
}

fn assert_all_ok(records: &[Record], what: &str) {
    let failed: Vec<_> = records.iter().filter(|r| !r.outcome.is_ok()).collect();
    assert!(failed.is_empty(), "{what}: {}", sample(failed));
}

async fn setup(token: &str, extra_args: &[&str]) -> (FakeApi, World, Proxy, Pki) {
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[token])).await;
    let world = World::with_sa(token, &pki.ca_pem(), "default");
    let proxy = Proxy::in_cluster(&world, &api, extra_args).await;
    (api, world, proxy, pki)
}

fn token(i: usize) -> String {
    format!("faults-token-{i}")
}

const ROTATIONS: usize = 5;
/// How often the token rotates (a schedule for the fault, not a wait for anything).
const ROTATION_EVERY: Duration = Duration::from_secs(2);
const TOKEN_CHANGED: &str = "token changed on disk";
const CA_CHANGED: &str = "CA changed on disk";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotations_under_load_lose_no_request_when_the_api_server_refuses_the_old_token_at_once()
 {
    let (api, world, proxy, _pki) = setup(&token(0), &[]).await;
    let load = Load::start(&proxy);
    load.until_done_since(0, 20).await;

    let mut schedule = tokio::time::interval(ROTATION_EVERY);
    for i in 1..=ROTATIONS {
        schedule.tick().await;
        let (old, new) = (token(i - 1), token(i));
        // The new token is valid from the moment it is issued; the kubelet publishes it;
        // the API server then refuses the old one at once.
        api.set_tokens(&[&old, &new]);
        world.rotate(Some(&new), None);
        api.set_tokens(&[&new]);
        load.set_phase(i as u64);
    }
    schedule.tick().await;
    let last = token(ROTATIONS);
    load.until("a request answered with the last token", |r| {
        r.iter()
            .any(|r| r.outcome.echoed_token().as_deref() == Some(&last))
    })
    .await;
    let records = load.finish().await;

    let refused_upstream = api
        .requests()
        .iter()
        .filter(|s| s.path.starts_with("/echo/faults") || s.path == PODS)
        .filter(|s| !s.authorized)
        .count();
    eprintln!(
        "token rotation, old token refused at once: {} requests, {} ok, {} met a 401 upstream \
         and were retried",
        records.len(),
        count(&records, |r| r.outcome.is_ok()),
        refused_upstream
    );
    assert_all_ok(&records, "requests lost to a token rotation");
    for i in 0..=ROTATIONS {
        assert!(
            records
                .iter()
                .any(|r| r.outcome.echoed_token() == Some(token(i))),
            "no request carried {}",
            token(i)
        );
    }
    assert!(
        !proxy.stderr().contains("faults-token-"),
        "a token reached the logs:\n{}",
        proxy.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotations_under_load_lose_no_request_and_the_new_token_is_used_at_once_while_the_old_one_stays_valid()
 {
    let (api, world, proxy, _pki) = setup(&token(0), &[]).await;
    let load = Load::start(&proxy);
    load.until_done_since(0, 20).await;

    let mut schedule = tokio::time::interval(ROTATION_EVERY);
    // Per rotation: where the fake API's log stood when it happened.
    let mut rotated_at = Vec::new();
    for i in 1..=ROTATIONS {
        schedule.tick().await;
        let new = token(i);
        // The previous token stays valid until the next rotation; the one before it dies.
        let prev = token(i - 1);
        api.set_tokens(&[&prev, &new]);
        rotated_at.push(api.requests().len());
        world.rotate(Some(&new), None);
        // Once the API server has seen the new token the proxy has switched, so every
        // request sent from now on must carry it.
        api.wait_for_request(|s| s.token.as_deref() == Some(new.as_str()))
            .await;
        load.set_phase(i as u64);
    }
    load.until("every rotation logged", |_| {
        proxy.stderr().matches(TOKEN_CHANGED).count() >= ROTATIONS
    })
    .await;
    schedule.tick().await;
    let records = load.finish().await;
    let seen = api.requests();

    // Requests that reached the API server with the previous token after the first one
    // with the new token: only those the proxy had already sent (at most one per worker).
    let mut late = Vec::new();
    for (i, &from) in rotated_at.iter().enumerate() {
        let (prev, new) = (token(i), token(i + 1));
        let first_new = from
            + seen[from..]
                .iter()
                .position(|s| s.token.as_deref() == Some(new.as_str()))
                .expect("the new token reached the API server");
        let until = rotated_at.get(i + 1).copied().unwrap_or(seen.len());
        late.push(
            seen[first_new..until]
                .iter()
                .filter(|s| s.token.as_deref() == Some(prev.as_str()))
                .count(),
        );
    }
    let stale: Vec<_> = records
        .iter()
        .filter(|r| r.phase_start > 0)
        .filter(|r| r.path.starts_with("/echo/"))
        .filter(|r| {
            // Sent once the API server had seen token `phase_start`: that one, or a later
            // one if a rotation happened while it was in flight; never an earlier one.
            let fresh = (r.phase_start as usize..=ROTATIONS).map(token);
            !fresh
                .into_iter()
                .any(|t| r.outcome.echoed_token() == Some(t))
        })
        .collect();
    eprintln!(
        "token rotation, old token valid until the next one: {} requests, {} ok; requests \
         with the previous token after the first with the new one, per rotation: {late:?}",
        records.len(),
        count(&records, |r| r.outcome.is_ok()),
    );
    assert_all_ok(&records, "requests lost to a token rotation");
    assert_eq!(
        proxy.stderr().matches(TOKEN_CHANGED).count(),
        ROTATIONS,
        "{}",
        proxy.stderr()
    );
    assert!(
        stale.is_empty(),
        "sent after the API server saw the new token, but carried another: {}",
        sample(stale)
    );
    assert!(
        late.iter().all(|&n| n <= WORKERS),
        "more requests with the previous token than were in flight: {late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_done_in_the_order_a_real_one_allows_loses_no_request_under_load() {
    let (api, world, proxy, old) = setup(&token(0), &[]).await;
    let load = Load::start(&proxy);
    load.until_done_since(0, 20).await;

    // 1. Trust the new CA alongside the old one.
    let new = Pki::new();
    world.rotate(None, Some(&format!("{}{}", old.ca_pem(), new.ca_pem())));
    load.until("the CA bundle to be loaded", |_| {
        proxy.stderr().matches(CA_CHANGED).count() >= 1
    })
    .await;
    load.set_phase(1);
    // 2. The API server switches to a certificate from the new CA; every connection is
    // made again.
    api.set_pki(new.clone());
    api.close_connections();
    load.set_phase(2);
    load.until_done_since(2, 100).await;
    // 3. The old CA is withdrawn; connections made from now on trust only the new one.
    world.rotate(None, Some(&new.ca_pem()));
    load.until("the new CA alone to be loaded", |_| {
        proxy.stderr().matches(CA_CHANGED).count() >= 2
    })
    .await;
    load.set_phase(3);
    api.close_connections();
    load.set_phase(4);
    load.until_done_since(4, 100).await;
    let records = load.finish().await;

    eprintln!(
        "CA rotation: {} requests, {} ok ({} sent after the server switched, {} after the \
         old CA was withdrawn)",
        records.len(),
        count(&records, |r| r.outcome.is_ok()),
        count(&records, |r| r.phase_start >= 2),
        count(&records, |r| r.phase_start >= 4),
    );
    assert_all_ok(&records, "requests lost to a CA rotation");
    assert!(
        !proxy.stderr().contains("keeping the previous CA"),
        "{}",
        proxy.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_under_load_answers_the_outage_with_503_status_and_then_serves_again()
{
    let (api, _world, proxy, _pki) = setup(&token(0), &[]).await;
    let load = Load::start(&proxy);
    load.until_done_since(0, 20).await;

    // One request is held at the API server when it stops: it is cut mid-way.
    let held_url = proxy.url("/hold/faults-restart");
    let held = tokio::spawn(async move { client::get(&held_url).await });
    api.wait_held("faults-restart").await;
    load.set_phase(1);
    api.stop().await;
    let held = within("the held request", held)
        .await
        .expect("held request");
    // The API server is down: nothing listens on its port.
    load.set_phase(2);
    load.until_done_since(2, 100).await;
    api.restart().await;
    load.set_phase(3);
    load.until_done_since(3, 200).await;
    let records = load.finish().await;

    // Ended before stop() was called.
    let before: Vec<_> = records.iter().filter(|r| r.phase_end == 0).collect();
    // In flight while stop() ran, or sent while it ran.
    let stopping: Vec<_> = records
        .iter()
        .filter(|r| r.phase_start <= 1 && r.phase_end >= 1)
        .collect();
    let outage: Vec<_> = records
        .iter()
        .filter(|r| r.phase_start == 2 && r.phase_end == 2)
        .collect();
    let restarting: Vec<_> = records
        .iter()
        .filter(|r| r.phase_start == 2 && r.phase_end == 3)
        .collect();
    let after: Vec<_> = records.iter().filter(|r| r.phase_start == 3).collect();
    let ok = |rs: &[&Record]| rs.iter().filter(|r| r.outcome.is_ok()).count();
    let s503 = |rs: &[&Record]| rs.iter().filter(|r| r.outcome.is_status(503)).count();
    eprintln!(
        "API server restart: {} requests; before: {} ({} ok); while stopping: {} ({} ok, {} \
         503); outage: {} ({} 503); across restart: {} ({} ok, {} 503); after: {} ({} ok)",
        records.len(),
        before.len(),
        ok(&before),
        stopping.len(),
        ok(&stopping),
        s503(&stopping),
        outage.len(),
        s503(&outage),
        restarting.len(),
        ok(&restarting),
        s503(&restarting),
        after.len(),
        ok(&after),
    );
    let held_status = held.json();
    eprintln!("API server restart: the request held across stop() got {held_status}");
    assert!(
        [502, 503, 504].contains(&held.status.as_u16()) && held_status["kind"] == "Status",
        "{} {held_status}",
        held.status
    );
    let hung: Vec<_> = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Hung))
        .collect();
    assert!(hung.is_empty(), "hung: {}", sample(hung));
    assert!(
        before.iter().all(|r| r.outcome.is_ok()),
        "before the outage: {}",
        sample(before.iter().copied().filter(|r| !r.outcome.is_ok()))
    );
    // In flight while the connections were cut, or sent while they were: served, or one
    // of the proxy's Status errors.
    let bad = stopping.iter().copied().filter(|r| {
        !(r.outcome.is_ok() || [502, 503, 504].iter().any(|&c| r.outcome.is_status(c)))
    });
    let bad: Vec<_> = bad.collect();
    assert!(bad.is_empty(), "while stopping: {}", sample(bad));
    assert!(outage.len() >= 100, "outage: {}", outage.len());
    let bad: Vec<_> = outage
        .iter()
        .copied()
        .filter(|r| !r.outcome.is_status(503))
        .collect();
    assert!(bad.is_empty(), "during the outage: {}", sample(bad));
    let bad: Vec<_> = restarting
        .iter()
        .copied()
        .filter(|r| !(r.outcome.is_ok() || r.outcome.is_status(503)))
        .collect();
    assert!(bad.is_empty(), "across the restart: {}", sample(bad));
    assert!(after.len() >= 200, "after: {}", after.len());
    let bad: Vec<_> = after
        .iter()
        .copied()
        .filter(|r| !r.outcome.is_ok())
        .collect();
    assert!(bad.is_empty(), "after the restart: {}", sample(bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_serves_through_the_shutdown_delay_then_refuses_new_connections_and_exits_0()
 {
    let (_api, _world, mut proxy, _pki) = setup(&token(0), &["--shutdown-delay=2s"]).await;
    let load = Load::start(&proxy);
    load.until_done_since(0, 20).await;

    load.set_phase(1);
    proxy.signal("TERM");
    proxy.wait_stderr("still serving for").await;
    load.set_phase(2);
    proxy.wait_stderr("shutting down: no new connections").await;
    load.set_phase(3);
    load.until("20 refused connections", |r| {
        count(r, |r| matches!(r.outcome, Outcome::Refused)) >= 20
    })
    .await;
    let records = load.finish().await;
    let status = proxy.wait().await;

    let in_flight: Vec<_> = records.iter().filter(|r| r.phase_start == 0).collect();
    let delay_ok = count(&records, |r| {
        (1..=2).contains(&r.phase_start) && r.outcome.is_ok()
    });
    let refused = count(&records, |r| matches!(r.outcome, Outcome::Refused));
    let closed = count(&records, |r| matches!(r.outcome, Outcome::Closed(_)));
    eprintln!(
        "SIGTERM: {} requests; before the signal: {} ({} ok); sent after it: {} ok, {refused} \
         refused, {closed} closed before any response byte",
        records.len(),
        in_flight.len(),
        in_flight.iter().filter(|r| r.outcome.is_ok()).count(),
        count(&records, |r| r.phase_start >= 1 && r.outcome.is_ok()),
    );
    assert!(status.success(), "{status:?}\n{}", proxy.stderr());
    let bad: Vec<_> = in_flight
        .iter()
        .copied()
        .filter(|r| !r.outcome.is_ok())
        .collect();
    assert!(bad.is_empty(), "sent before SIGTERM: {}", sample(bad));
    // Every request is served, or its connection refused (or closed unanswered, if it
    // raced the listener closing): never another answer, garbage, or a hang.
    let bad: Vec<_> = records
        .iter()
        .filter(|r| {
            !matches!(
                r.outcome,
                Outcome::Answered { status: 200, .. } | Outcome::Refused | Outcome::Closed(_)
            )
        })
        .collect();
    assert!(bad.is_empty(), "{}", sample(bad));
    // (The delay is 2 s and requests go out every 5 ms: some are served during it.)
    assert!(delay_ok > 0, "no request served during the shutdown delay");
    // Once a connection was refused, the proxy served no request sent later.
    let first_refusal = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Refused))
        .map(|r| r.end)
        .min()
        .expect("refusals");
    let served_late: Vec<_> = records
        .iter()
        .filter(|r| r.start > first_refusal && r.outcome.is_ok())
        .collect();
    assert!(
        served_late.is_empty(),
        "served after a refusal: {}",
        sample(served_late)
    );
}
