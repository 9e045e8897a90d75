//! A lean HTTP/1.1 client for the load generator: one keep-alive connection per caller, one
//! request at a time, the request written in one piece and the answer read with `httparse`.
//!
//! The load shares the two cores with what it measures, so what it costs per order is taken
//! from order-api and PostgreSQL. With reqwest (its pool, hyper's state machines, a task per
//! connection) the load generator took 0.20 cores at 4,500 orders/s; with this, 0.10 at 6,000.
//! pgbench, the ceiling's own client, is a lean C loop too (0.22 cores at 9,000 tps), as wrk
//! and oha are.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Headers an answer may carry (order-api sends about five).
const MAX_HEADERS: usize = 32;

/// A connection idle longer than this is not reused: actix-web closes keep-alive connections
/// idle for 5 s, and a request written into one that is closing fails.
pub const REUSE_WITHIN: Duration = Duration::from_secs(2);

/// An answer: its status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server said `connection: close`: the connection must not be used again.
    pub closing: bool,
}

/// One keep-alive connection to an HTTP/1.1 server.
pub struct Connection {
    stream: TcpStream,
    host: String,
    /// Bytes read and not yet consumed (an answer's head and body arrive in any pieces).
    read: Vec<u8>,
    /// The request being written, reused.
    request: Vec<u8>,
    /// When the last answer was read (or the connection made).
    idle_since: Instant,
}

impl Connection {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            host: addr.to_string(),
            read: Vec::with_capacity(4096),
            request: Vec::with_capacity(512),
            idle_since: Instant::now(),
        })
    }

    /// Whether the connection was idle for less than [`REUSE_WITHIN`].
    pub fn fresh(&self) -> bool {
        self.idle_since.elapsed() < REUSE_WITHIN
    }

    /// `POST path` with a JSON body; fails after `timeout` (the connection is then unusable:
    /// drop it).
    pub async fn post_json(
        &mut self,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<Answer> {
        tokio::time::timeout(timeout, self.exchange(path, body))
            .await
            .with_context(|| format!("no answer within {timeout:?}"))?
    }

    async fn exchange(&mut self, path: &str, body: &[u8]) -> anyhow::Result<Answer> {
        use std::io::Write;
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.host,
            body.len()
        )?;
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await?;
        self.read_answer().await
    }

    async fn read_answer(&mut self) -> anyhow::Result<Answer> {
        loop {
            if let Some(Head {
                len: head_len,
                status,
                body_len,
                closing,
            }) = parse_head(&self.read)?
            {
                while self.read.len() < head_len + body_len {
                    self.fill().await?;
                }
                let body = self.read[head_len..head_len + body_len].to_vec();
                self.read.drain(..head_len + body_len);
                self.idle_since = Instant::now();
                return Ok(Answer {
                    status,
                    body,
                    closing,
                });
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the server closed the connection");
        self.read.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// An answer's head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    /// Its length in bytes, up to the body.
    len: usize,
    status: u16,
    body_len: usize,
    closing: bool,
}

/// The answer's head, once all of it is in `bytes`.
fn parse_head(bytes: &[u8]) -> anyhow::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(bytes).context("malformed HTTP answer")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.context("no status")?;
    let (mut body_len, mut closing) = (None, false);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            body_len = Some(std::str::from_utf8(header.value)?.trim().parse::<usize>()?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            anyhow::bail!("chunked answers are not read by this client");
        } else if header.name.eq_ignore_ascii_case("connection") {
            closing = header.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok(Some(Head {
        len,
        status,
        body_len: body_len.unwrap_or(0),
        closing,
    }))
}

/// Runs `work` on a thread of its own with a single-threaded runtime, so the load takes at most
/// one core and no wake-up crosses threads, and waits for it from this runtime.
pub async fn on_own_thread<F, Fut, T>(work: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-load".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot build the load's runtime")
                .and_then(|runtime| runtime.block_on(work()));
            let _ = tx.send(result);
        })?;
    rx.await
        .context("the load's thread ended without a result")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_once_complete_with_its_body_length_and_whether_the_server_closes() {
        let answer = b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\nlocation: /orders/x\r\n\r\n{}";
        assert_eq!(parse_head(&answer[..20]).unwrap(), None);
        let head = Head {
            len: answer.len() - 2,
            status: 201,
            body_len: 2,
            closing: false,
        };
        assert_eq!(parse_head(answer).unwrap(), Some(head));
        let closing = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(parse_head(closing).unwrap().unwrap().closing);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }
}
