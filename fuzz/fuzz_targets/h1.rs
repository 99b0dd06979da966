//! Any bytes from an upstream: the response head parser (with its framing and `Keep-Alive`
//! timeout) and the chunked decoder never panic, and reading the bytes in one piece or a byte
//! at a time gives the same result — where a response ends must not depend on how the network
//! happened to split it.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis::http::h1::{self, Chunk, Chunked};
use portcullis::http::hop::HopByHop;

/// Heads and framing found, the body decoded, what was left: fed `step` bytes at a time.
fn read(data: &[u8], step: usize) -> (Vec<String>, Vec<u8>, Option<h1::H1Error>, usize) {
    let mut buf = BytesMut::new();
    let mut heads = Vec::new();
    let mut body = Vec::new();
    let mut chunked: Option<Chunked> = None;
    // One connection's name cache for every head read (interim ones, then the final one).
    let mut names = h1::Names::default();
    let mut pieces = data.chunks(step);
    loop {
        match &mut chunked {
            None => match h1::parse_head(&mut buf, &mut names) {
                Ok(Some(r)) => {
                    let f = h1::response_framing(false, &r, &HopByHop::of(r.headers()));
                    let timeout = h1::keep_alive_timeout(r.headers());
                    heads.push(format!(
                        "{} {:?} {:?} {timeout:?}",
                        r.status(),
                        r.headers(),
                        f
                    ));
                    if let Ok((h1::Framing::Chunked, _)) = f {
                        chunked = Some(Chunked::default());
                    } else {
                        // Only chunked bodies are decoded here; the rest is read by length.
                        return (heads, body, None, buf.len());
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => return (heads, body, Some(e), 0),
            },
            Some(c) => match c.decode(&mut buf) {
                Ok(Chunk::Data(d)) => {
                    assert!(!d.is_empty());
                    body.extend_from_slice(&d);
                    continue;
                }
                Ok(Chunk::End) => return (heads, body, None, buf.len()),
                Ok(Chunk::NeedMore) => {
                    assert!(buf.is_empty(), "the decoder asked for more with bytes left");
                }
                Err(e) => return (heads, body, Some(e), 0),
            },
        }
        match pieces.next() {
            Some(p) => buf.extend_from_slice(p),
            None => return (heads, body, None, usize::MAX),
        }
    }
}

/// A head parsed with a connection's name cache that holds an earlier response's names is the
/// head parsed afresh.
fn names_cache_changes_nothing(data: &[u8]) {
    let fresh = h1::parse_head(&mut BytesMut::from(data), &mut h1::Names::default());
    let mut names = h1::Names::default();
    let earlier = b"HTTP/1.1 200 OK\r\nContent-Type: a\r\nX-Custom: b\r\nconnection: c\r\n\r\n";
    assert!(matches!(
        h1::parse_head(&mut BytesMut::from(&earlier[..]), &mut names),
        Ok(Some(_))
    ));
    let cached = h1::parse_head(&mut BytesMut::from(data), &mut names);
    match (fresh, cached) {
        (Ok(Some(a)), Ok(Some(b))) => {
            assert_eq!((a.status(), a.headers()), (b.status(), b.headers()));
        }
        (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
        (a, b) => panic!("fresh {a:?}, cached {b:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    names_cache_changes_nothing(data);
    let whole = read(data, data.len().max(1));
    let bytewise = read(data, 1);
    // A head is only parsed once complete, so the heads found agree; the body too, up to
    // where either stopped.
    assert_eq!(whole.0, bytewise.0);
    assert_eq!(
        whole.2.is_some(),
        bytewise.2.is_some(),
        "{whole:?} / {bytewise:?}"
    );
    if whole.2.is_none() {
        assert_eq!(whole.1, bytewise.1);
    }
});
