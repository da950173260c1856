//! A TCP relay for fault injection: `127.0.0.1:<port>` forwarded byte for byte to a real
//! server, with the server-to-client direction slowed to a rate the test sets — a slow network
//! link in front of a real server (SeaweedFS), so a test can act while a download is under way
//! (e.g. kill the agent reading it) without racing it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The relay; stopped (with every connection it carries) when dropped.
pub struct Relay {
    /// Where clients connect (127.0.0.1).
    pub port: u16,
    rate: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay addr").port();
        let rate = Arc::new(AtomicU64::new(0));
        let shared = rate.clone();
        let task = tokio::spawn(async move {
            // Dropped with the task: aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let rate = shared.clone();
                connections.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                        let _ = sw.shutdown().await;
                    };
                    let down = copy_limited(&mut sr, &mut cw, &rate);
                    tokio::join!(up, down);
                });
                // Reap finished connections.
                while connections.try_join_next().is_some() {}
            }
        });
        Relay { port, rate, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Limits the server-to-client direction of every connection to `bytes_per_second`
    /// (0: no limit), from the next chunk on.
    pub fn limit(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, at most `rate` bytes a second when `rate` is not 0 (chunks of a
/// tenth of a second's worth, each followed by its share of the second).
async fn copy_limited(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    rate: &AtomicU64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let limit = rate.load(Ordering::Relaxed);
        let chunk = if limit == 0 {
            buf.len()
        } else {
            (limit / 10).clamp(1, buf.len() as u64) as usize
        };
        let n = match from.read(&mut buf[..chunk]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if limit > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / limit as f64)).await;
        }
    }
    let _ = to.shutdown().await;
}
