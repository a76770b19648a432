//! The allocator's premise, checked against the hyper in `Cargo.lock`: an HTTP/1.1
//! connection's two per-connection buffers (`INIT_BUFFER_SIZE`, private to hyper) are
//! exactly the size `kube_ambassador::memory` gives a slot of its own. A hyper release that
//! changed that size would send them back to the heap without any other test noticing;
//! this one holds a watch open, server and client side both, and counts the slots.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use kube_ambassador::memory::{Allocator, slots_in_use};

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// A watch: one event, then the stream stays open.
async fn watch(
    _req: hyper::Request<hyper::body::Incoming>,
) -> Result<
    hyper::Response<StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>>>>,
    Infallible,
> {
    let event = Bytes::from_static(b"{\"type\":\"ADDED\",\"object\":{\"kind\":\"Pod\"}}\n");
    let frames = futures::stream::iter([Ok(Frame::data(event))]).chain(futures::stream::pending());
    Ok(hyper::Response::new(StreamBody::new(frames)))
}

#[tokio::test]
async fn a_held_watch_keeps_its_http1_buffers_in_slots() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let before = slots_in_use();

    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), hyper::service::service_fn(watch))
            .await;
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let client = tokio::spawn(conn);
    let req = hyper::Request::get("/api/v1/pods?watch=1")
        .header("host", "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(
        first
            .data_ref()
            .is_some_and(|d| d.starts_with(b"{\"type\""))
    );

    // Each side has read and written once: its read buffer and its header write buffer.
    let held = slots_in_use() - before;
    assert!(
        held >= 4,
        "a watch holds {held} slots, not 4 (2 per side): has hyper's buffer size changed \
         from the 8 KiB that memory::SLOT assumes?"
    );

    // The event's bytes share the client's read buffer: it goes with them.
    drop(first);
    drop(body);
    drop(sender);
    client.abort();
    server.abort();
    // Freed when the aborted tasks drop their connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    while slots_in_use() > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        slots_in_use(),
        before,
        "slots were not given back (held {held})"
    );
}
