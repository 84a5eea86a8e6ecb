//! Request path sanity, as Envoy's `normalize_path` and `merge_slashes` do it: a path that
//! cannot be a path is refused, `//` and `.` segments are removed, `..` segments are resolved,
//! and a `..` that would climb above the root is refused rather than silently clamped, so a
//! route matched on the normalised path is the route the backend sees.

/// Why a path is refused (`400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path has a byte that is not allowed in a path ({0:#04x})")]
    BadByte(u8),
    #[error("the path has an invalid percent-encoding")]
    BadPercent,
    #[error("the path climbs above the root with '..'")]
    Escapes,
}

/// The normalised path (without query), or why it is refused.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |b: u8| b.is_ascii_hexdigit();
            if i + 2 >= bytes.len() || !(hex(bytes[i + 1]) && hex(bytes[i + 2])) {
                return Err(PathError::BadPercent);
            }
            i += 3;
            continue;
        }
        // RFC 3986 pchar plus '/': unreserved, sub-delims, ':' and '@'.
        let ok = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
        if !ok {
            return Err(PathError::BadByte(b));
        }
        i += 1;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        // Percent-encoded dots are dots for this purpose (Envoy decodes %2E first).
        let dots = decoded_dots(seg);
        match (seg.is_empty(), dots) {
            (true, _) => {
                if n == last {
                    trailing_slash = true;
                }
            }
            (false, Some(1)) => {
                if n == last {
                    trailing_slash = true;
                }
            }
            (false, Some(2)) => {
                if out.pop().is_none() {
                    return Err(PathError::Escapes);
                }
                if n == last {
                    trailing_slash = true;
                }
            }
            _ => out.push(seg),
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for seg in &out {
        normalized.push('/');
        normalized.push_str(seg);
    }
    if trailing_slash || normalized.is_empty() {
        normalized.push('/');
    }
    Ok(normalized)
}

/// `Some(n)` when a segment is `n` dots (1 or 2), plain or percent-encoded.
fn decoded_dots(seg: &str) -> Option<usize> {
    let mut n = 0;
    let mut rest = seg;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("%2e") {
            rest = &rest[3..];
        } else {
            return None;
        }
        n += 1;
    }
    (n == 1 || n == 2).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_as_envoy_does_and_escapes_are_refused() {
        let ok = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("//a///b", "/a/b"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/../b", "/b"),
            ("/a/%2e/b", "/a/b"),
            ("/a/%2E%2E/b", "/b"),
            ("/a/b%20c", "/a/b%20c"),
            ("/.", "/"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
        let bad = [
            ("/..", PathError::Escapes),
            ("/a/../../etc/passwd", PathError::Escapes),
            ("/%2e%2e/x", PathError::Escapes),
            ("a/b", PathError::NotAbsolute),
            ("/a%zz", PathError::BadPercent),
            ("/a%2", PathError::BadPercent),
            ("/a\\b", PathError::BadByte(b'\\')),
            ("/a b", PathError::BadByte(b' ')),
            ("/a\u{7f}", PathError::BadByte(0x7f)),
        ];
        for (input, want) in bad {
            assert_eq!(normalize(input), Err(want), "{input}");
        }
    }
}
