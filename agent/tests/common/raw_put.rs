//! A stream PUT over a raw TCP connection, for tests that hold a stream open mid-way.
//!
//! The head carries the stream's size (`Content-Length`) and `Expect: 100-continue`: the
//! store answers `100 Continue` when it starts reading the body, which it does only once the
//! stream is admitted, or answers its refusal before a byte of the body is sent. So a test
//! knows for certain whether a stream was admitted, and can then send some of it, hold, send
//! the rest, or drop the connection (a stream cut off).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// How long an answer may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// A final answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// A PUT in progress.
pub struct RawPut {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl RawPut {
    /// Sends the head of `PUT path` as the caller with `token`, with `headers`, a
    /// `Content-Length` of `len` and `Expect: 100-continue`.
    pub async fn start(
        addr: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        len: usize,
    ) -> Self {
        let conn = TcpStream::connect(addr).await.expect("connect");
        let (reader, mut writer) = conn.into_split();
        let mut head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\
             Expect: 100-continue\r\n"
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        writer.write_all(head.as_bytes()).await.expect("send head");
        Self {
            reader: BufReader::new(reader),
            writer,
        }
    }

    /// Whether the stream was admitted: `Ok` on `100 Continue`, else the refusal.
    pub async fn admitted(&mut self) -> Result<(), Answer> {
        let (status, length) = self.read_head().await;
        if status == 100 {
            return Ok(());
        }
        Err(self.read_body(status, length).await)
    }

    /// Sends `data`, the next part of the body.
    pub async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(data).await?;
        self.writer.flush().await
    }

    /// The final answer (after the whole body was sent).
    pub async fn answer(&mut self) -> Answer {
        let (status, length) = self.read_head().await;
        self.read_body(status, length).await
    }

    /// A response head: its status and `Content-Length`.
    async fn read_head(&mut self) -> (u16, usize) {
        tokio::time::timeout(ANSWER_WITHIN, async {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.expect("status line");
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP status line: {line:?}"));
            let mut length = 0;
            loop {
                line.clear();
                self.reader.read_line(&mut line).await.expect("header line");
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().expect("Content-Length");
                }
            }
            (status, length)
        })
        .await
        .expect("an answer in time")
    }

    async fn read_body(&mut self, status: u16, length: usize) -> Answer {
        let mut body = vec![0u8; length];
        tokio::time::timeout(ANSWER_WITHIN, self.reader.read_exact(&mut body))
            .await
            .expect("the answer's body in time")
            .expect("the answer's body");
        Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}
