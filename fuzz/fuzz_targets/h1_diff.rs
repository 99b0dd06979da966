//! The same upstream bytes, read as the answer to a GET by Portcullis's HTTP/1 codec
//! (`proxy::h1`, driven as `proxy::forward` drives it) and by hyper's HTTP/1 client over an
//! in-memory stream. Where both accept a response, they agree on its status, its headers and
//! its body (so on where it ends). Where `h1` accepts what hyper refuses, that is a finding:
//! fixed in `h1`, or listed in `justified` with the RFC 9112 section that allows it. (`h1`
//! refusing what hyper accepts is expected: it is the stricter of the two on purpose.)
#![no_main]
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use portcullis::http::h1::{self, Chunk, Chunked, Framing};
use portcullis::http::hop::HopByHop;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response as read whole: status, headers, body.
#[derive(Debug, PartialEq, Eq)]
struct Read {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// `h1`'s reading, and whether its body had trailer fields: `None` when it refuses the bytes
/// or they end before the response does.
fn by_h1(data: &[u8]) -> Option<(Read, bool)> {
    let mut buf = BytesMut::from(data);
    let mut names = h1::Names::default();
    let resp = loop {
        match h1::parse_head(&mut buf, &mut names).ok()?? {
            // `forward` refuses a 101 nobody asked for, and skips other interim responses.
            r if r.status() == StatusCode::SWITCHING_PROTOCOLS => return None,
            r if r.status().is_informational() => continue,
            r => break r,
        }
    };
    let (framing, _) = h1::response_framing(false, &resp, &HopByHop::of(resp.headers())).ok()?;
    let mut trailers = false;
    let body = match framing {
        Framing::Length(n) => {
            let n = usize::try_from(n).ok()?;
            (buf.len() >= n).then(|| buf.split_to(n).freeze())?
        }
        Framing::Close => buf.split().freeze(),
        Framing::Chunked => {
            let mut c = Chunked::default();
            let mut out = Vec::new();
            loop {
                match c.decode(&mut buf).ok()? {
                    Chunk::Data(d) => out.extend_from_slice(&d),
                    Chunk::End => {
                        trailers = c.had_trailers();
                        break Bytes::from(out);
                    }
                    Chunk::NeedMore => return None,
                }
            }
        }
    };
    let (parts, ()) = resp.into_parts();
    let read = Read {
        status: parts.status,
        headers: parts.headers,
        body,
    };
    Some((read, trailers))
}

/// hyper's reading of the same bytes (sent, then the connection closed), as its client reads
/// the answer to a GET; `None` when it refuses them.
fn by_hyper(rt: &tokio::runtime::Runtime, data: &[u8]) -> Option<Read> {
    rt.block_on(async {
        let (client, mut server) = tokio::io::duplex(data.len() + 64 * 1024);
        let answer = data.to_vec();
        // The upstream answers once the request has arrived (a response read before any
        // request is hyper's "unexpected message"), then closes.
        let upstream = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while memchr::memmem::find(&seen, b"\r\n\r\n").is_none() {
                match server.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = server.write_all(&answer).await;
            let _ = server.shutdown().await;
            // Held open for reading until the client is done.
            let _ = server.read(&mut buf).await;
        });
        let (mut send, conn) = hyper::client::conn::http1::Builder::new()
            // As many fields as `h1` takes (hyper's default is 100): a limit, not framing.
            .max_headers(128)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(client))
            .await
            .ok()?;
        let driver = tokio::spawn(conn);
        let req = http::Request::get("/")
            .header("host", "upstream")
            .body(Empty::new())
            .ok()?;
        let resp = send.send_request(req).await.ok()?;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(std::time::Duration::from_secs(5), body.collect())
            .await
            .ok()?
            .ok()?
            .to_bytes();
        upstream.abort();
        driver.abort();
        Some(Read {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    })
}

/// Why it is right that `h1` accepts bytes hyper refuses, if it is.
fn justified(had_trailers: bool) -> Option<&'static str> {
    // A chunked body's trailer section: `h1` skips its lines unread (RFC 9112 §7.1.2 lets a
    // recipient discard trailer fields; Portcullis forwards none), so a malformed field there
    // is not refused, while hyper parses them. Where the body ends is the same for both: the
    // empty line, with CRLF line ends (§7.1).
    had_trailers.then_some("trailer fields h1 skips unparsed (RFC 9112 §7.1.2)")
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
}

fuzz_target!(|data: &[u8]| {
    let Some((ours, had_trailers)) = by_h1(data) else {
        return;
    };
    match RT.with(|rt| by_hyper(rt, data)) {
        Some(theirs) => assert_eq!(
            ours,
            theirs,
            "h1 and hyper read {:?} differently",
            String::from_utf8_lossy(data)
        ),
        None => assert!(
            justified(had_trailers).is_some(),
            "h1 accepts what hyper refuses: {:?}",
            String::from_utf8_lossy(data)
        ),
    }
});
