//! A scripted upstream: it reads each request (head, then a `Content-Length` or chunked body,
//! left as it came) and writes back exact bytes, so tests see what the proxy really sent and
//! can answer with what no well-behaved server would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request as the upstream received it: which connection (numbered from 0), the head and
/// the body (chunked bodies left as they came).
#[derive(Debug, Clone)]
pub struct Got {
    pub conn: usize,
    /// Which request on its connection (from 0).
    pub nth: usize,
    pub head: String,
    pub body: Vec<u8>,
}

impl Got {
    pub fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }
    pub fn method(&self) -> &str {
        self.head.split(' ').next().unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// What the upstream writes back for a request, and whether it then closes the connection.
pub type Script = fn(&Got) -> (Vec<u8>, bool);

/// An upstream that reads each request (head, then a `Content-Length` or chunked body) and
/// writes the script's bytes back in one write.
pub struct Scripted {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Scripted {
    pub async fn start(script: Script) -> Scripted {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let all = got.clone();
        tokio::spawn(async move {
            for conn in 0.. {
                let Ok((s, _)) = l.accept().await else {
                    return;
                };
                let all = all.clone();
                tokio::spawn(async move {
                    let mut s = s;
                    let mut buf = Vec::new();
                    let mut nth = 0;
                    while let Some(mut g) = read_request(&mut s, &mut buf, conn).await {
                        g.nth = nth;
                        nth += 1;
                        all.lock().unwrap().push(g.clone());
                        let (reply, close) = script(&g);
                        if s.write_all(&reply).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Scripted { addr, got }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>, conn: usize) -> Option<Got> {
    let mut tmp = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut tmp).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut g = Got {
        conn,
        nth: 0,
        head,
        body: Vec::new(),
    };
    let done = |b: &[u8]| -> Option<usize> {
        if let Some(n) = g.header("content-length") {
            let n: usize = n.parse().ok()?;
            return (b.len() >= n).then_some(n);
        }
        if g.header("transfer-encoding").is_some() {
            return b.windows(5).position(|w| w == b"0\r\n\r\n").map(|i| i + 5);
        }
        Some(0)
    };
    let take = loop {
        if let Some(n) = done(buf) {
            break n;
        }
        let n = s.read(&mut tmp).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&tmp[..n]);
    };
    g.body = buf.drain(..take).collect();
    Some(g)
}

/// A 200 with `body`, framed by its length.
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
