//! HTTP/1.1 towards the upstream, as pure functions over bytes: the request head written, the
//! response head parsed, the response body's framing decided and chunked bodies decoded.
//! `forward` drives them over a pooled connection; the `h1` fuzz target drives them over
//! arbitrary bytes.
//!
//! Strict where a lenient reading could make two parties disagree on where a response ends
//! (the next response on the connection would then be read from the wrong place): no obsolete
//! line folding, no bare LF, `Transfer-Encoding` only as `chunked`, conflicting
//! `Content-Length`s refused, and a connection whose response carried both is not reused.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

use super::hop::HopByHop;

/// The most a response head may take.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
const MAX_HEADERS: usize = 128;
/// `Keep-Alive`: where an upstream announces its idle timeout (see [`keep_alive_timeout`]).
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// The most bytes of chunk extensions per chunk, and of trailer fields per body.
const MAX_EXT: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// What was wrong with the upstream's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H1Error(pub &'static str);

impl std::fmt::Display for H1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for H1Error {}

/// How the request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqFraming {
    /// No body and no framing header.
    None,
    Length(u64),
    Chunked,
}

/// Writes the request head: `Host` first, then `headers`, which must have had their
/// hop-by-hop fields removed already (`headers::request_headers`); the framing fields are
/// this function's alone. `out` is the connection's buffer, kept from one request to the next.
pub fn encode_request<'h>(
    method: &Method,
    path_and_query: &str,
    host: &HeaderValue,
    headers: impl Iterator<Item = (&'h HeaderName, &'h HeaderValue)>,
    framing: ReqFraming,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in headers {
        if n == CONTENT_LENGTH || n == TRANSFER_ENCODING || n == HOST {
            continue;
        }
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ReqFraming::None => {}
        ReqFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The framing for a request body: none when it is empty (`Content-Length: 0` for the methods
/// that usually carry one, as servers may ask for a length there), its length when known,
/// chunked otherwise.
pub fn request_framing(method: &Method, empty: bool, exact: Option<u64>) -> ReqFraming {
    if empty {
        return match *method {
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE => {
                ReqFraming::None
            }
            _ => ReqFraming::Length(0),
        };
    }
    match exact {
        Some(n) => ReqFraming::Length(n),
        None => ReqFraming::Chunked,
    }
}

/// The header names of the last response head read on a connection, by position, as they
/// came and as parsed: an upstream sends the same names in the same order, and comparing a
/// name's bytes costs less than parsing it again (and a custom name is then shared, not
/// copied). Owned copies: a slice of the head would keep the read buffer from being reused.
#[derive(Default)]
pub struct Names(Vec<(Box<[u8]>, HeaderName)>);

impl Names {
    /// The name at `i` whose bytes are `raw`.
    fn get(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, H1Error> {
        if let Some((b, n)) = self.0.get(i) {
            if **b == *raw {
                return Ok(n.clone());
            }
        }
        let n =
            HeaderName::from_bytes(raw).map_err(|_| H1Error("malformed response header name"))?;
        let entry = (Box::from(raw), n.clone());
        match self.0.get_mut(i) {
            Some(slot) => *slot = entry,
            None => self.0.push(entry),
        }
        Ok(n)
    }
}

/// Parses a response head from the front of `buf`, taking it out of `buf` when complete. The
/// header values share the head's bytes (no copy per value); `names` are the connection's.
/// `Ok(None)`: not complete yet.
pub fn parse_head(buf: &mut BytesMut, names: &mut Names) -> Result<Option<Response<()>>, H1Error> {
    // (name start, name end, value start, value end) in the head, which is at most MAX_HEAD.
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    // Left uninitialized: httparse fills what it parses (8 KiB less to clear per response).
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let base = buf.as_ptr() as usize;
    let (len, code, minor, count) = {
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut raw);
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(H1Error("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(H1Error("too many response header fields"))
            }
            Err(_) => return Err(H1Error("malformed response head")),
        };
        if len > MAX_HEAD {
            return Err(H1Error("response head too large"));
        }
        // httparse takes a bare LF as a line end; RFC 9112 §2.2 lets a recipient do so, but a
        // proxy frames for others and another reader of the same bytes may not (§11.1).
        if memchr::memchr_iter(b'\n', &buf[..len]).any(|i| i == 0 || buf[i - 1] != b'\r') {
            return Err(H1Error("bare LF in the response head"));
        }
        let at = |p: *const u8| (p as usize - base) as u32;
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            let (ns, vs) = (at(h.name.as_ptr()), at(h.value.as_ptr()));
            *span = [ns, ns + h.name.len() as u32, vs, vs + h.value.len() as u32];
        }
        (len, resp.code, resp.version, resp.headers.len())
    };
    let version = match minor {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(H1Error("unsupported HTTP version")),
    };
    let status = code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(H1Error("malformed status code"))?;
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for (i, &[ns, ne, vs, ve]) in spans[..count].iter().enumerate() {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        // `i` is at most the cache's length: positions are visited in order from 0.
        let name = names.get(i, &head[ns..ne])?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| H1Error("malformed response header value"))?;
        headers.append(name, value);
    }
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    Ok(Some(resp))
}

/// Where a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// At the end of the connection.
    Close,
}

/// A response's framing (RFC 9112 §6.3) and whether its connection may carry another request.
/// `hop` is what the response has of the hop-by-hop headers (`headers::HopByHop::of`): the
/// framing headers it does not have are not looked up.
pub fn response_framing(
    head_request: bool,
    resp: &Response<()>,
    hop: &HopByHop,
) -> Result<(Framing, bool), H1Error> {
    let h = resp.headers();
    let mut keep_alive = keep_alive(resp.version(), hop.has(&CONNECTION).then_some(h));
    let status = resp.status();
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Length(0), keep_alive));
    }
    if hop.has(&TRANSFER_ENCODING) {
        if resp.version() == Version::HTTP_10 {
            return Err(H1Error("Transfer-Encoding in an HTTP/1.0 response"));
        }
        let mut codings = h
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|c| c.trim_ascii())
            .filter(|c| !c.is_empty());
        let only_chunked = matches!(codings.next(), Some(c) if c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !only_chunked {
            return Err(H1Error("unsupported Transfer-Encoding"));
        }
        if h.contains_key(CONTENT_LENGTH) {
            // Both: the chunked framing wins, and the connection is not trusted again.
            keep_alive = false;
        }
        return Ok((Framing::Chunked, keep_alive));
    }
    let mut length: Option<u64> = None;
    for v in h.get_all(CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii())?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error("conflicting Content-Length"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::Close, false),
    })
}

fn parse_length(s: &[u8]) -> Result<u64, H1Error> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return Err(H1Error("malformed Content-Length"));
    }
    Ok(s.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// `h`: the headers, when they have a `Connection` header.
fn keep_alive(version: Version, h: Option<&HeaderMap>) -> bool {
    let mut close = false;
    let mut keep = false;
    for v in h.into_iter().flat_map(|h| h.get_all(CONNECTION)) {
        for t in v.as_bytes().split(|&b| b == b',') {
            let t = t.trim_ascii();
            close |= t.eq_ignore_ascii_case(b"close");
            keep |= t.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (version == Version::HTTP_11 || keep)
}

/// The idle time an upstream announces with `Keep-Alive: timeout=N` (seconds; RFC 2068 §19.7.1,
/// sent by Node.js, Apache and others), after which it closes a keep-alive connection itself.
/// `None` when absent or malformed; the first well-formed `timeout` wins.
pub fn keep_alive_timeout(h: &HeaderMap) -> Option<u64> {
    h.get_all(KEEP_ALIVE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .find_map(|param| {
            let eq = param.iter().position(|&b| b == b'=')?;
            let (name, value) = (&param[..eq], &param[eq + 1..]);
            if !name.trim_ascii().eq_ignore_ascii_case(b"timeout") {
                return None;
            }
            let value = value.trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
        })
}

/// What the chunked decoder found.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    Data(Bytes),
    /// Everything in the buffer is used up; read more.
    NeedMore,
    /// The last chunk and the trailer section (dropped) have been read.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Size,
    /// Whitespace after the size (RFC 9112 §7.1.1's BWS): only a `;` or the line end may follow.
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    End,
}

/// A chunked body decoder (RFC 9112 §7.1): sizes of at most 16 hex digits, followed only by
/// whitespace then `;` extensions (skipped, bounded) or the line end (`5 x` is refused, not read
/// as 5), CRLF required everywhere, trailer fields skipped (bounded).
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    digits: u8,
    size: u64,
    skipped: usize,
    line: usize,
}

impl Chunked {
    pub fn is_end(&self) -> bool {
        self.state == State::End
    }

    /// At the end: did the body have trailer fields (which are skipped unread)?
    pub fn had_trailers(&self) -> bool {
        self.state == State::End && self.skipped > 0
    }

    /// Decodes from the front of `buf`; data comes out without a copy.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, H1Error> {
        loop {
            if self.state == State::End {
                return Ok(Chunk::End);
            }
            if self.state == State::Data {
                if buf.is_empty() {
                    return Ok(Chunk::NeedMore);
                }
                let take = buf
                    .len()
                    .min(usize::try_from(self.size).unwrap_or(usize::MAX));
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Chunk::Data(buf.split_to(take).freeze()));
            }
            let Some(&b) = buf.first() else {
                return Ok(Chunk::NeedMore);
            };
            buf.advance(1);
            self.state = match (self.state, b) {
                (State::Size, b'\r') if self.digits > 0 => State::SizeLf,
                (State::Size | State::SizeWs, b';') if self.digits > 0 => {
                    self.skipped = 0;
                    State::Ext
                }
                (State::Size | State::SizeWs, b' ' | b'\t') if self.digits > 0 => State::SizeWs,
                (State::SizeWs, b'\r') => State::SizeLf,
                (State::SizeWs, _) => return Err(H1Error("malformed chunk size")),
                (State::Size, _) => {
                    let d = (b as char)
                        .to_digit(16)
                        .ok_or(H1Error("malformed chunk size"))?;
                    if self.digits == 16 {
                        return Err(H1Error("chunk size too large"));
                    }
                    self.digits += 1;
                    self.size = self.size << 4 | u64::from(d);
                    State::Size
                }
                (State::Ext, b'\r') => State::SizeLf,
                (State::Ext, b'\n') => return Err(H1Error("bare LF in a chunk extension")),
                (State::Ext, _) => {
                    self.skipped += 1;
                    if self.skipped > MAX_EXT {
                        return Err(H1Error("chunk extension too long"));
                    }
                    State::Ext
                }
                (State::SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 {
                        self.skipped = 0;
                        self.line = 0;
                        State::Trailer
                    } else {
                        State::Data
                    }
                }
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Size,
                (State::Trailer, b'\r') => State::TrailerLf,
                (State::Trailer, b'\n') => return Err(H1Error("bare LF in a trailer")),
                (State::Trailer, _) => {
                    self.line += 1;
                    self.skipped += 1;
                    if self.skipped > MAX_TRAILERS {
                        return Err(H1Error("trailer section too long"));
                    }
                    State::Trailer
                }
                (State::TrailerLf, b'\n') if self.line == 0 => State::End,
                (State::TrailerLf, b'\n') => {
                    self.line = 0;
                    State::Trailer
                }
                _ => return Err(H1Error("malformed chunked body")),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<Option<Response<()>>, H1Error> {
        parse_head(&mut BytesMut::from(s), &mut Names::default())
    }

    fn framing(s: &str) -> Result<(Framing, bool), H1Error> {
        let r = head(s)?.ok_or(H1Error("partial"))?;
        response_framing(false, &r, &HopByHop::of(r.headers()))
    }

    #[test]
    fn keep_alive_timeout_is_read_from_its_parameter() {
        let t = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(KEEP_ALIVE, HeaderValue::from_str(v).expect("value"));
            }
            keep_alive_timeout(&h)
        };
        assert_eq!(t(&["timeout=5"]), Some(5));
        assert_eq!(t(&["Timeout = 72, max=100"]), Some(72));
        assert_eq!(t(&["max=100, timeout=\"3\""]), Some(3));
        assert_eq!(t(&["max=100", "timeout=0"]), Some(0));
        assert_eq!(t(&[]), None);
        assert_eq!(t(&["max=100"]), None);
        assert_eq!(t(&["timeout="]), None);
        assert_eq!(t(&["timeout=-1"]), None);
        assert_eq!(t(&["timeout=5s"]), None);
        assert_eq!(t(&["timeout=99999999999999999999"]), None);
        assert_eq!(t(&["timeout=x, timeout=4"]), Some(4));
    }

    /// Decodes `input` fed in pieces of `step` bytes; the data and whether it ended.
    fn dechunk(input: &[u8], step: usize) -> Result<(Vec<u8>, bool), H1Error> {
        let mut d = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf)? {
                    Chunk::Data(b) => out.extend_from_slice(&b),
                    Chunk::NeedMore => break,
                    Chunk::End => return Ok((out, buf.is_empty())),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn the_request_head_owns_its_framing_and_its_host() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("client"));
        h.insert("content-length", HeaderValue::from_static("999"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let up = HeaderValue::from_static("up");
        let mut out = Vec::new();
        encode_request(
            &Method::POST,
            "/p?q=1",
            &up,
            h.iter(),
            ReqFraming::Length(5),
            &mut out,
        );
        assert_eq!(
            &out[..],
            b"POST /p?q=1 HTTP/1.1\r\nhost: up\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 5\r\n\r\n"
        );
        out.clear();
        encode_request(&Method::GET, "/", &up, h.iter(), ReqFraming::None, &mut out);
        assert_eq!(
            &out[..],
            b"GET / HTTP/1.1\r\nhost: up\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
        out.clear();
        encode_request(
            &Method::PUT,
            "/",
            &up,
            HeaderMap::new().iter(),
            ReqFraming::Chunked,
            &mut out,
        );
        assert_eq!(
            &out[..],
            b"PUT / HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn a_connections_name_cache_follows_each_head() {
        let mut names = Names::default();
        let mut read = |head: &str| {
            let r = parse_head(&mut BytesMut::from(head), &mut names)
                .unwrap()
                .unwrap();
            r.headers()
                .iter()
                .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            read("HTTP/1.1 200 OK\r\nContent-Type: a\r\nX-One: 1\r\n\r\n"),
            ["content-type=a", "x-one=1"]
        );
        // Same names in the same places: taken from the cache.
        assert_eq!(
            read("HTTP/1.1 200 OK\r\nContent-Type: b\r\nX-One: 2\r\n\r\n"),
            ["content-type=b", "x-one=2"]
        );
        // Another name in a place, a longer head, other case, a shorter one.
        assert_eq!(
            read("HTTP/1.1 200 OK\r\nContent-Type: c\r\nX-Two: 3\r\nx-one: 4\r\n\r\n"),
            ["content-type=c", "x-two=3", "x-one=4"]
        );
        assert_eq!(
            read("HTTP/1.1 200 OK\r\nCONTENT-TYPE: d\r\n\r\n"),
            ["content-type=d"]
        );
        assert_eq!(
            read("HTTP/1.1 204 No Content\r\nX-One: 5\r\nX-Two: 6\r\nX-Three: 7\r\n\r\n"),
            ["x-one=5", "x-two=6", "x-three=7"]
        );
        // A malformed name is refused wherever it stands.
        assert!(parse_head(
            &mut BytesMut::from("HTTP/1.1 200 OK\r\nX-One: 1\r\nBad Name: 2\r\n\r\n"),
            &mut names
        )
        .is_err());
    }

    #[test]
    fn request_framing_follows_the_body() {
        assert_eq!(
            request_framing(&Method::GET, true, Some(0)),
            ReqFraming::None
        );
        assert_eq!(
            request_framing(&Method::POST, true, Some(0)),
            ReqFraming::Length(0)
        );
        assert_eq!(
            request_framing(&Method::POST, false, Some(7)),
            ReqFraming::Length(7)
        );
        assert_eq!(
            request_framing(&Method::POST, false, None),
            ReqFraming::Chunked
        );
    }

    #[test]
    fn a_response_head_is_parsed_and_taken_from_the_buffer() {
        let mut buf =
            BytesMut::from("HTTP/1.1 201 Created\r\nA: 1\r\nb:  two \r\nA: 3\r\n\r\nbody");
        let r = parse_head(&mut buf, &mut Names::default())
            .unwrap()
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.version(), Version::HTTP_11);
        let a: Vec<_> = r.headers().get_all("a").iter().collect();
        assert_eq!(a, ["1", "3"]);
        assert_eq!(r.headers()["b"], "two");
        assert_eq!(&buf[..], b"body");

        let text = "HTTP/1.1 200 OK\r\nA: 1\r\n";
        let mut partial = BytesMut::from(text);
        assert!(matches!(
            parse_head(&mut partial, &mut Names::default()),
            Ok(None)
        ));
        assert_eq!(
            &partial[..],
            text.as_bytes(),
            "a partial head stays in the buffer"
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\nA: 1\r\n folded\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA : 1\r\n\r\n",
            "HTTP/2.0 200 OK\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA\0: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\r2\r\n\r\n",
            "junk\r\n\r\n",
            // A bare LF as line end, anywhere in the head.
            "HTTP/1.1 200 OK\nA: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\r\n\n",
            "HTTP/1.1 200 OK\n\n",
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "A: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            head(&many).err(),
            Some(H1Error("too many response header fields"))
        );
        let huge = format!("HTTP/1.1 200 OK\r\nA: {}", "x".repeat(MAX_HEAD + 1));
        assert_eq!(head(&huge).err(), Some(H1Error("response head too large")));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use Framing::*;
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
            Ok((Length(12), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 12, 12\r\nContent-Length: 12\r\n\r\n"),
            Ok((Length(12), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok((Chunked, true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            Ok((Chunked, false)),
            "both: chunked wins and the connection is not reused"
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Ok((Close, false)));
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"),
            Ok((Length(0), true))
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\n\r\n"),
            Ok((Length(0), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"),
            Ok((Length(1), false))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"),
            Ok((Length(1), false))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n"),
            Ok((Length(1), true))
        );
        let r = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            response_framing(true, &r, &HopByHop::of(r.headers())),
            Ok((Length(0), true)),
            "a HEAD response has no body"
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunkedx\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(framing(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_pieces() {
        let body =
            b"5 \r\nhello\r\n1 ; ext=1\r\n \r\nA\t;x\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n";
        for step in 1..body.len() + 1 {
            assert_eq!(
                dechunk(body, step),
                Ok((b"hello 0123456789".to_vec(), true)),
                "step {step}"
            );
        }
        let (_, rest_empty) = dechunk(b"0\r\n\r\nHTTP/1.1", 100).unwrap();
        assert!(!rest_empty, "what follows the body stays in the buffer");
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"\r\n",
            b"g\r\n",
            b"-1\r\n",
            b"0\r\nA: 1\n\r\n",
            b"10000000000000000\r\n",
            b"5;\n",
            // Junk after the size: not read as 5.
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5\tx\r\nhello\r\n0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5 \n",
        ] {
            assert!(
                dechunk(bad, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let ext = format!("1;{}\r\n", "e".repeat(MAX_EXT + 1));
        assert_eq!(
            dechunk(ext.as_bytes(), 100),
            Err(H1Error("chunk extension too long"))
        );
        let trailers = format!("0\r\n{}", "T: x\r\n".repeat(MAX_TRAILERS / 4 + 1));
        assert_eq!(
            dechunk(trailers.as_bytes(), 100),
            Err(H1Error("trailer section too long"))
        );
        assert_eq!(
            dechunk(b"ffffffffffffffff\r\n", 100),
            Ok((Vec::new(), false)),
            "16 digits is allowed"
        );
    }
}
