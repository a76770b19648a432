//! Many requests at once through the proxy, for the upstream tests that must cross h2's
//! 1,024-reset mark on one connection: each helper reports how many failed.

use futures::StreamExt;

use super::client::{self, Resp};
use super::proxy::Proxy;

/// Clients at once.
pub const PARALLEL: usize = 16;

/// `n` GETs of `url`, [`PARALLEL`] at a time; the number for which `ok` is false (each
/// printed).
pub async fn get_many(url: &str, n: usize, ok: impl Fn(&Resp) -> bool) -> usize {
    futures::stream::iter(0..n)
        .map(|i| {
            let ok = &ok;
            async move {
                let resp = client::get(url).await;
                let good = ok(&resp);
                if !good {
                    eprintln!("GET {i} of {url}: {} {}", resp.status, resp.text());
                }
                good
            }
        })
        .buffer_unordered(PARALLEL)
        .filter(|good| std::future::ready(!good))
        .count()
        .await
}

/// `n` watches of `url` that each read one event and leave mid-response; the number that
/// failed to open or to deliver that event.
pub async fn watch_and_leave_many(url: &str, n: usize) -> usize {
    futures::stream::iter(0..n)
        .map(|_| async move {
            let mut watch = client::get_stream(url, &[]).await;
            watch.status == 200 && watch.next_line().await.is_some()
        })
        .buffer_unordered(PARALLEL)
        .filter(|good| std::future::ready(!good))
        .count()
        .await
}

/// Fails if the proxy's h2 ever reached its limit of locally reset streams (and so sent
/// GOAWAY ENHANCE_YOUR_CALM on its own upstream connection).
pub fn assert_no_reset_limit(proxy: &Proxy) {
    let log = proxy.stderr();
    assert!(
        !log.contains("reached limit") && !log.contains("ENHANCE_YOUR_CALM"),
        "the proxy reset streams past h2's limit:\n{log}"
    );
}
