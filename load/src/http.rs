//! The smallest HTTP/1.1 client the benchmarks need: a fixed GET, and a response parser that
//! finds where the response ends (Content-Length, or end of stream with `Connection: close`).

/// `GET <path>` for `host`, with extra header lines (`name: value`, e.g. an API key); with
/// `close`, asks the server to close after answering.
pub fn request_with(host: &str, path: &str, close: bool, headers: &[String]) -> Vec<u8> {
    let connection = if close { "close" } else { "keep-alive" };
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {connection}\r\n{extra}\r\n")
        .into_bytes()
}

/// How much of a buffered response is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The head is not complete yet.
    NeedHead,
    /// The head is complete; the whole response is `total` bytes long (`None`: it ends when
    /// the server closes).
    Head { status: u16, total: Option<usize> },
}

/// Looks at the bytes received so far.
pub fn parse(buf: &[u8]) -> Result<Progress, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            return Err("response head longer than 16 KiB".to_owned());
        }
        return Ok(Progress::NeedHead);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut total = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                let len: usize = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?;
                total = Some(end + 4 + len);
            } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
                // The benchmark server sends static files; chunked bodies would need a
                // decoder that is not worth its cost in the measuring loop.
                return Err("chunked responses are not supported".to_owned());
            }
        }
    }
    Ok(Progress::Head { status, total })
}

/// Whether the response in `buf` is complete, after a read that returned `eof` (0 bytes).
/// Keep-alive responses end at their length; with `Connection: close` (`close`) a response
/// ends when the server closes, so the generator reads to the end and TIME_WAIT stays with
/// the server, not with the generator's ports. A non-200 status, or a close before the whole
/// response, is an error.
pub fn response_done(buf: &[u8], eof: bool, close: bool) -> anyhow::Result<bool> {
    match parse(buf).map_err(anyhow::Error::msg)? {
        Progress::Head { status, .. } if status != 200 => anyhow::bail!("HTTP status {status}"),
        Progress::Head {
            total: Some(total), ..
        } if buf.len() >= total && !close => Ok(true),
        Progress::Head { total, .. } if eof => match total {
            Some(t) if buf.len() < t => {
                anyhow::bail!("connection closed after {} of {t} bytes", buf.len())
            }
            _ => Ok(true),
        },
        Progress::NeedHead if eof => anyhow::bail!("connection closed before a response"),
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_a_response() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n"), Ok(Progress::NeedHead));
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse(r),
            Ok(Progress::Head {
                status: 200,
                total: Some(r.len())
            })
        );
        assert_eq!(
            parse(b"HTTP/1.0 404 Not Found\r\n\r\n"),
            Ok(Progress::Head {
                status: 404,
                total: None
            })
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn builds_requests() {
        let r = String::from_utf8(request_with("10.0.0.1:80", "/1k", true, &[])).unwrap();
        assert!(r.starts_with("GET /1k HTTP/1.1\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
        let keyed = request_with("h", "/1k", false, &["x-api-key: k".to_owned()]);
        assert!(
            String::from_utf8(keyed)
                .unwrap()
                .ends_with("keep-alive\r\nx-api-key: k\r\n\r\n")
        );
    }
}
