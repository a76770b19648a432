//! A TCP relay in front of a server that can freeze the connections it carries, for the
//! dead-connection tests: a black-holed path, where nothing fails and nothing moves.

use super::client::AbortOnDrop;

/// A TCP relay in front of the fake API server that can freeze the connections it
/// carries: sockets stay open, nothing moves (a black-holed connection). Connections made
/// after a freeze are not frozen.
pub struct Relay {
    pub port: u16,
    freezes: tokio::sync::watch::Sender<u64>,
    _accept: AbortOnDrop,
}

impl Relay {
    pub async fn start(to: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("relay bind");
        let port = listener.local_addr().expect("relay addr").port();
        let freezes = tokio::sync::watch::Sender::new(0u64);
        let tx = freezes.clone();
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    continue;
                };
                let epoch = *tx.borrow();
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, tx.subscribe(), epoch));
                tokio::spawn(pump(ur, dw, tx.subscribe(), epoch));
            }
        });
        Relay {
            port,
            freezes,
            _accept: AbortOnDrop(accept),
        }
    }

    /// Freezes every connection open now.
    pub fn freeze(&self) {
        self.freezes.send_modify(|g| *g += 1);
    }
}

/// Copies one direction until the connection ends or is frozen (then holds it for ever).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut freezes: tokio::sync::watch::Receiver<u64>,
    epoch: u64,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0; 16 * 1024];
    loop {
        // The freeze is checked first: nothing read after it is passed on.
        tokio::select! {
            biased;
            () = async { drop(freezes.wait_for(|g| *g > epoch).await) } => break,
            n = from.read(&mut buf) => {
                let n = match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    // Frozen: keep both halves open, move nothing.
    std::future::pending::<()>().await;
    drop((from, to));
}
