//! A TCP pass-through for `bench/run.sh`: the least work any proxy hop can do. It accepts
//! connections and copies bytes both ways to the upstream address, one thread, no TLS and
//! no HTTP: the client's TLS session goes through it to the fake API server untouched.
//! What the benchmark's "pass-through" column shows is therefore the cost of the hop
//! alone (a second pair of sockets, their wake-ups and copies on the same cores), the
//! ceiling for what a proxy that also terminates TLS and parses HTTP can reach here.
//!
//! ```text
//! tcp-forward LISTEN_ADDR UPSTREAM_ADDR     e.g. tcp-forward 127.0.0.1:18005 127.0.0.1:6443
//! ```

use std::process::ExitCode;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream] = args.as_slice() else {
        eprintln!("usage: tcp-forward LISTEN_ADDR UPSTREAM_ADDR");
        return ExitCode::from(2);
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tcp-forward: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        let mut client = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                // EMFILE and the like: say so, and keep serving the connections there are
                // (after a pause, not in a loop that spins on the error).
                eprintln!("tcp-forward: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            match TcpStream::connect(&upstream).await {
                Ok(mut server) => {
                    // Both sides carry small request/response exchanges: no Nagle delay.
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                Err(e) => eprintln!("tcp-forward: connect to {upstream}: {e}"),
            }
        });
    }
}
