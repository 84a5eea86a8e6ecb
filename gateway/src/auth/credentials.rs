//! Finding credentials in a request and taking them out of it, so they never reach the
//! upstream.

use http::{HeaderValue, Uri, header, request::Parts, uri::PathAndQuery};

use super::{error::Rejection, policy::ApiKeyPlaces};

/// Longest API key looked at; longer ones are refused before hashing (the key is never
/// stored, but hashing megabytes of header per request would be an easy way to burn CPU).
pub const MAX_API_KEY_BYTES: usize = 1024;

/// What a request presented, already removed from it.
pub(crate) enum Presented<T> {
    None,
    Some(T),
    Bad(Rejection),
}

/// Removes every configured API-key header and query parameter from the request and returns
/// the first key found (headers first, in configured order).
pub(crate) fn take_api_key(places: &ApiKeyPlaces, parts: &mut Parts) -> Presented<Vec<u8>> {
    let mut found: Option<Result<Vec<u8>, Rejection>> = None;
    for name in &places.headers {
        // `remove` drops every value of the header, so a second copy cannot slip through.
        if let Some(value) = parts.headers.remove(name)
            && found.is_none()
        {
            found = Some(key_from_header(&value));
        }
    }
    if !places.query_params.is_empty()
        && let Some(query) = parts.uri.query()
    {
        let (key, rest) = take_query_params(query, &places.query_params);
        if key.is_some() || rest.len() != query.len() {
            if found.is_none() {
                found = key.map(|k| k.and_then(check_key));
            }
            match with_query(&parts.uri, Some(rest.as_str())) {
                Some(uri) => parts.uri = uri,
                None => return Presented::Bad(Rejection::Malformed),
            }
        }
    }
    match found {
        None => Presented::None,
        Some(Ok(key)) => Presented::Some(key),
        Some(Err(r)) => Presented::Bad(r),
    }
}

fn key_from_header(value: &HeaderValue) -> Result<Vec<u8>, Rejection> {
    check_key(value.as_bytes().trim_ascii().to_vec())
}

fn check_key(key: Vec<u8>) -> Result<Vec<u8>, Rejection> {
    if key.is_empty() || key.len() > MAX_API_KEY_BYTES || !key.iter().all(u8::is_ascii_graphic) {
        return Err(Rejection::Malformed);
    }
    Ok(key)
}

/// Splits `query` into the first value of any of `names` (percent-decoded) and the query
/// without every parameter of those names, the others kept byte for byte and in order.
/// `+` is kept as is: keys are opaque tokens, and a `+` that a client did not encode is more
/// likely part of a base64 key than a space.
pub(crate) fn take_query_params(
    query: &str,
    names: &[String],
) -> (Option<Result<Vec<u8>, Rejection>>, String) {
    let mut key = None;
    let mut rest = String::with_capacity(query.len());
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let is_key = percent_decode(name)
            .is_some_and(|decoded| names.iter().any(|n| n.as_bytes() == decoded.as_slice()));
        if is_key {
            if key.is_none() {
                key = Some(percent_decode(value).ok_or(Rejection::Malformed));
            }
            continue;
        }
        if !rest.is_empty() {
            rest.push('&');
        }
        rest.push_str(pair);
    }
    (key, rest)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi << 4 | lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The URI with its query replaced (`None` or empty: no `?` at all).
fn with_query(uri: &Uri, query: Option<&str>) -> Option<Uri> {
    let path = uri.path();
    let pq = match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).ok()?);
    Uri::from_parts(parts).ok()
}

/// Removes `Authorization` when it carries a bearer token (RFC 6750 section 2.1) and returns
/// the token. Another scheme (Basic, ...) is not this gateway's and stays for the upstream.
pub(crate) fn take_bearer(parts: &mut Parts) -> Presented<String> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Presented::None;
    };
    let bytes = value.as_bytes();
    let is_bearer = bytes.len() >= 7 && bytes[..7].eq_ignore_ascii_case(b"bearer ");
    if !is_bearer {
        return Presented::None;
    }
    let token = match std::str::from_utf8(&bytes[7..]) {
        Ok(t) => t.trim().to_string(),
        Err(_) => String::new(),
    };
    parts.headers.remove(header::AUTHORIZATION);
    if token.is_empty() {
        return Presented::Bad(Rejection::Malformed);
    }
    Presented::Some(token)
}
