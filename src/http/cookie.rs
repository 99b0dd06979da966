//! Cookie headers as bytes: the `;`-separated pairs, and a cookie's value by name. Browsers send
//! values as they were set, UTF-8 included: bytes, so another cookie's bytes never hide one.

use http::header::COOKIE;
use http::HeaderMap;

/// The value of cookie `name` in the request (the first, if a client sent it twice), as text.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie_bytes(headers, name).and_then(|v| std::str::from_utf8(v).ok())
}

/// The value of cookie `name` in the request (the first, if a client sent it twice).
pub fn cookie_bytes<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    cookie_pairs(headers)
        .find(|(k, _)| *k == name.as_bytes())
        .map(|(_, v)| v)
}

/// The value of cookie `name` when the request carries one value under that name. Two
/// different values are ambiguous and give none: a sibling host can plant a second cookie of
/// the same name with `Domain=` (and a longer `Path`, which browsers send first).
pub fn unique_cookie_bytes<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    let mut found: Option<&[u8]> = None;
    for (k, v) in cookie_pairs(headers) {
        if k == name.as_bytes() {
            match found {
                Some(f) if f != v => return None,
                _ => found = Some(v),
            }
        }
    }
    found
}

/// Does the request carry cookie `name` under two different values?
pub fn conflicting(headers: &HeaderMap, name: &str) -> bool {
    cookie_bytes(headers, name).is_some() && unique_cookie_bytes(headers, name).is_none()
}

/// Every `name=value` pair of the request's Cookie headers, as bytes: browsers send values
/// as they were set, UTF-8 included, and another cookie's bytes must not hide the session's.
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| pairs(v.as_bytes()))
        .filter_map(|c| {
            let eq = memchr::memchr(b'=', c)?;
            Some((&c[..eq], &c[eq + 1..]))
        })
}

/// The `;`-separated parts of one Cookie header, trimmed, empty ones skipped (`memchr`: a
/// browser's Cookie header can be kilobytes, and is read several times per request).
pub fn pairs(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b';', value)
        .chain(std::iter::once(value.len()))
        .map(move |end| {
            let part = &value[start..end];
            start = end + 1;
            part.trim_ascii()
        })
        .filter(|p| !p.is_empty())
}
