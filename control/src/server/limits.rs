//! Bounds on what a client can make the control plane hold, log or show: message sizes,
//! streams and requests per connection, how long a silent peer stays connected, and the
//! size of the free text a client sends (hello fields, NACK reasons).

use std::time::Duration;

/// The largest message a client may send on the discovery service. Clients send hellos,
/// ACKs and NACKs, all far smaller; half of gRPC's 4 MiB default still leaves room for a
/// NACK with a 1 MiB reason (kept truncated), and halves what one stream can make the server
/// buffer.
pub const MAX_DISCOVERY_REQUEST: usize = 2 * 1024 * 1024;
/// The largest Sign request: a CSR for a P-256 key is well under 1 KiB.
pub const MAX_SIGN_REQUEST: usize = 64 * 1024;
/// HTTP/2 streams a client may open at once on one connection. An agent needs one
/// Subscribe stream and one Sign call at a time; weftctl one call.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// Requests one connection may have in the handlers at once.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 16;
/// HTTP/2 pings find subscribers that vanished without closing their connection (a node
/// that crashed, a dropped NAT entry), so their streams and queues are released: the
/// interval and timeout istiod and the agent's side of the connection use.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A hello's `name`: a pod or instance name, a DNS name at most.
pub const MAX_HELLO_NAME: usize = 253;
/// A hello's `client_version`: a version string.
pub const MAX_CLIENT_VERSION: usize = 128;
/// The resource types one hello may list: there are fewer kinds than this.
pub const MAX_HELLO_TYPES: usize = 16;
/// What is kept of a NACK's reason, for the log and `weftctl status`: enough for any
/// conversion error a client reports.
pub const MAX_NACK_REASON: usize = 1024;
/// What is kept of a NACK's resource name: a `namespace/name` is at most 507 bytes.
pub const MAX_NACK_RESOURCE: usize = 512;

/// `text` made safe to log and show: control characters (newlines above all, which would
/// forge log lines or table rows) escaped, and at most `max` bytes of it kept, with a
/// note of how much was dropped.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    let mut taken = 0;
    for c in text.chars() {
        let escaped: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if out.len() + escaped.len() > max {
            out.push_str(&format!(
                "...[{} more bytes dropped]",
                text.len().saturating_sub(taken)
            ));
            return out;
        }
        out.push_str(&escaped);
        taken += c.len_utf8();
    }
    out
}

/// Whether `text` has a control character (refused in hello fields, which are names).
pub fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_truncates() {
        assert_eq!(sanitize("plain", 10), "plain");
        assert_eq!(sanitize("a\nb\rc\u{1b}", 100), "a\\nb\\rc\\u{1b}");
        let long = "x\n".repeat(1000);
        let s = sanitize(&long, 100);
        assert!(s.len() <= 100 + 40, "{}", s.len());
        assert!(!s.contains('\n'));
        assert!(s.ends_with("more bytes dropped]"), "{s}");
        // Never cut inside a character.
        let s = sanitize(&"é".repeat(100), 11);
        assert!(s.starts_with("ééééé..."), "{s}");
    }
}
