//! The DNS wire format, as much of it as a stub resolver's proxy needs (RFC 1035, RFC 6891):
//! a query parser that reads the header, the one question and any OPT record, and an answer
//! writer for A and AAAA records. Forwarded queries and answers travel as opaque bytes.
//!
//! Every read is bounds-checked: a query is bytes from a pod, so nothing here panics on
//! input, and every failure says what is wrong.

use std::net::IpAddr;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 12;
/// The largest UDP message without EDNS (RFC 1035 4.2.1).
pub const MAX_PLAIN_UDP: usize = 512;
/// The largest query accepted with EDNS, or over TCP: a query is one question and an OPT
/// record, a few hundred bytes; anything much longer is not a query.
pub const MAX_QUERY: usize = 4096;
/// The UDP payload size this proxy advertises and honours at most (the DNS flag day 2020
/// value: fits any path MTU without fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Names longer than this (in wire octets) are malformed (RFC 1035 2.3.4).
const MAX_NAME: usize = 255;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const OPCODE_MASK: u16 = 0x7800;

/// Response codes this proxy sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

/// The header fields a reply echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    pub header: Header,
    /// The question's name, dotted, without the final dot; a '.' or '\' inside a label, and
    /// bytes outside printable ASCII, are escaped (`\.`, `\\`, `\DDD`), so no odd label can
    /// pass for a name of the cluster.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section as received (name, type, class), echoed in replies so the
    /// name keeps its case.
    pub question: &'a [u8],
    /// The UDP payload size of the query's OPT record, if it has one.
    pub edns: Option<u16>,
}

/// Why bytes are not a query this proxy answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer bytes than a header: nothing to answer to, dropped.
    #[error("{len} bytes, shorter than a DNS header ({HEADER_LEN})")]
    NoHeader { len: usize },
    /// A response (QR set): dropped, never answered, so two proxies cannot ping-pong.
    #[error("a response, not a query")]
    NotAQuery,
    /// Answered FORMERR.
    #[error("malformed query: {what} at byte {at}")]
    Malformed {
        header: Header,
        what: &'static str,
        at: usize,
    },
    /// An opcode other than QUERY: answered NOTIMP.
    #[error("opcode {opcode} is not implemented")]
    NotImplemented { header: Header, opcode: u16 },
}

impl ParseError {
    /// The answer a client gets for this, if any.
    pub fn reply(&self) -> Option<Vec<u8>> {
        match self {
            ParseError::NoHeader { .. } | ParseError::NotAQuery => None,
            ParseError::Malformed { header, .. } => Some(header_only(*header, Rcode::FormErr)),
            ParseError::NotImplemented { header, .. } => Some(header_only(*header, Rcode::NotImp)),
        }
    }
}

/// A reader over a message that fails, instead of panicking, past its end.
struct Reader<'a> {
    msg: &'a [u8],
    at: usize,
    header: Header,
}

impl<'a> Reader<'a> {
    fn malformed(&self, what: &'static str) -> ParseError {
        ParseError::Malformed {
            header: self.header,
            what,
            at: self.at,
        }
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        let end = self.at.checked_add(n).ok_or_else(|| self.malformed(what))?;
        let out = self
            .msg
            .get(self.at..end)
            .ok_or_else(|| self.malformed(what))?;
        self.at = end;
        Ok(out)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ParseError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A name in the question: labels only (a query's question is never compressed).
    fn question_name(&mut self) -> Result<String, ParseError> {
        let start = self.at;
        let mut name = String::new();
        loop {
            let len = self.bytes(1, "name runs past the end")?[0];
            if len == 0 {
                break;
            }
            if len & 0xC0 != 0 {
                return Err(self.malformed("compressed or reserved label in the question"));
            }
            let label = self.bytes(usize::from(len), "label runs past the end")?;
            if self.at - start > MAX_NAME {
                return Err(self.malformed("name longer than 255 octets"));
            }
            if !name.is_empty() {
                name.push('.');
            }
            for &b in label {
                match b {
                    b'.' | b'\\' => {
                        name.push('\\');
                        name.push(char::from(b));
                    }
                    0x21..=0x7E => name.push(char::from(b)),
                    _ => name.push_str(&format!("\\{b:03}")),
                }
            }
        }
        if self.at - start > MAX_NAME {
            return Err(self.malformed("name longer than 255 octets"));
        }
        Ok(name)
    }

    /// Skips a name anywhere else: labels, ending in a root label or a compression pointer.
    fn skip_name(&mut self) -> Result<(), ParseError> {
        let start = self.at;
        loop {
            let len = self.bytes(1, "name runs past the end")?[0];
            match len & 0xC0 {
                0 if len == 0 => return Ok(()),
                0 => {
                    self.bytes(usize::from(len), "label runs past the end")?;
                }
                0xC0 => {
                    self.bytes(1, "compression pointer runs past the end")?;
                    return Ok(());
                }
                _ => return Err(self.malformed("reserved label type")),
            }
            if self.at - start > MAX_NAME {
                return Err(self.malformed("name longer than 255 octets"));
            }
        }
    }
}

/// Parses a query: exactly one question; answer and authority sections (empty in any real
/// query) are skipped; at most one OPT record in the additional section.
pub fn parse_query(msg: &[u8]) -> Result<Query<'_>, ParseError> {
    if msg.len() < HEADER_LEN {
        return Err(ParseError::NoHeader { len: msg.len() });
    }
    let header = Header {
        id: u16::from_be_bytes([msg[0], msg[1]]),
        flags: u16::from_be_bytes([msg[2], msg[3]]),
    };
    if header.flags & FLAG_QR != 0 {
        return Err(ParseError::NotAQuery);
    }
    let opcode = (header.flags & OPCODE_MASK) >> 11;
    if opcode != 0 {
        return Err(ParseError::NotImplemented { header, opcode });
    }
    let count = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    let mut r = Reader {
        msg,
        at: HEADER_LEN,
        header,
    };
    if qd != 1 {
        return Err(r.malformed("question count is not 1"));
    }
    let name = r.question_name()?;
    let qtype = r.u16("question type runs past the end")?;
    let qclass = r.u16("question class runs past the end")?;
    let question = &msg[HEADER_LEN..r.at];
    for _ in 0..(u32::from(an) + u32::from(ns)) {
        skip_record(&mut r)?;
    }
    let mut edns = None;
    for _ in 0..ar {
        let owner_root = r.msg.get(r.at) == Some(&0);
        let (rtype, class) = skip_record(&mut r)?;
        if rtype == TYPE_OPT {
            if edns.is_some() {
                return Err(r.malformed("more than one OPT record"));
            }
            if !owner_root {
                return Err(r.malformed("OPT record not owned by the root"));
            }
            edns = Some(class);
        }
    }
    Ok(Query {
        header,
        name,
        qtype,
        qclass,
        question,
        edns,
    })
}

/// Skips one resource record; its type and class.
fn skip_record(r: &mut Reader<'_>) -> Result<(u16, u16), ParseError> {
    r.skip_name()?;
    let rtype = r.u16("record type runs past the end")?;
    let class = r.u16("record class runs past the end")?;
    r.bytes(4, "record TTL runs past the end")?;
    let len = r.u16("record length runs past the end")?;
    r.bytes(usize::from(len), "record data runs past the end")?;
    Ok((rtype, class))
}

impl Query<'_> {
    /// The largest reply the client takes over UDP: 512 bytes, or its EDNS payload size
    /// (at most ours).
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(size) => usize::from(size.clamp(MAX_PLAIN_UDP as u16, EDNS_PAYLOAD)),
            None => MAX_PLAIN_UDP,
        }
    }

    /// Whether the question is of class IN (or ANY).
    pub fn class_in(&self) -> bool {
        self.qclass == CLASS_IN || self.qclass == 255
    }
}

/// A reply to `query` with `rcode` and one A or AAAA record per address, authoritative when
/// `authoritative` (names of the cluster). A reply longer than `limit` loses its answers and
/// says it was truncated (TC), so the client asks again over TCP.
pub fn reply(
    query: &Query<'_>,
    rcode: Rcode,
    authoritative: bool,
    addresses: &[IpAddr],
    ttl: u32,
    limit: usize,
) -> Vec<u8> {
    let mut flags = FLAG_QR | (query.header.flags & (OPCODE_MASK | FLAG_RD)) | FLAG_RA;
    if authoritative {
        flags |= FLAG_AA;
    }
    flags |= rcode as u16;
    let opt_len = if query.edns.is_some() { 11 } else { 0 };
    let answers_len: usize = addresses
        .iter()
        .map(|ip| if ip.is_ipv4() { 16 } else { 28 })
        .sum();
    let full = HEADER_LEN + query.question.len() + answers_len + opt_len;
    let (addresses, flags) = if full > limit {
        (&[][..], flags | FLAG_TC)
    } else {
        (addresses, flags)
    };
    let mut out = Vec::with_capacity(full);
    out.extend_from_slice(&query.header.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&u16::from(query.edns.is_some()).to_be_bytes());
    out.extend_from_slice(query.question);
    for ip in addresses {
        // The owner is the question's name: a pointer to it, right after the header.
        out.extend_from_slice(&[0xC0, HEADER_LEN as u8]);
        let (rtype, data): (u16, Vec<u8>) = match ip {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    if query.edns.is_some() {
        // OPT: root owner, our payload size, extended rcode and version 0, no options.
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
    }
    out
}

/// A reply with no sections, for a query whose question could not be read.
pub fn header_only(header: Header, rcode: Rcode) -> Vec<u8> {
    let flags = FLAG_QR | (header.flags & (OPCODE_MASK | FLAG_RD)) | FLAG_RA | rcode as u16;
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&header.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// The fields of a reply the proxy checks before relaying it: its id and whether it is a
/// response that was truncated. `None` when it is no response at all.
pub fn reply_header(msg: &[u8]) -> Option<(u16, bool)> {
    let head = msg.get(..HEADER_LEN)?;
    let flags = u16::from_be_bytes([head[2], head[3]]);
    (flags & FLAG_QR != 0).then(|| (u16::from_be_bytes([head[0], head[1]]), flags & FLAG_TC != 0))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A query for `name` of `qtype`, with an OPT record when `edns` is set.
    pub fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&FLAG_RD.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0]);
        q.extend_from_slice(&u16::from(edns.is_some()).to_be_bytes());
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some(size) = edns {
            q.push(0);
            q.extend_from_slice(&TYPE_OPT.to_be_bytes());
            q.extend_from_slice(&size.to_be_bytes());
            q.extend_from_slice(&[0; 6]);
        }
        q
    }

    /// (rcode, flags, answer count, the answers' addresses) of a reply.
    pub fn decode(reply: &[u8]) -> (u16, u16, Vec<IpAddr>) {
        let flags = u16::from_be_bytes([reply[2], reply[3]]);
        let an = u16::from_be_bytes([reply[6], reply[7]]);
        let mut r = Reader {
            msg: reply,
            at: HEADER_LEN,
            header: Header { id: 0, flags: 0 },
        };
        let qd = u16::from_be_bytes([reply[4], reply[5]]);
        for _ in 0..qd {
            r.skip_name().unwrap();
            r.bytes(4, "").unwrap();
        }
        let mut ips = Vec::new();
        for _ in 0..an {
            r.skip_name().unwrap();
            let rtype = r.u16("").unwrap();
            r.bytes(6, "").unwrap();
            let len = r.u16("").unwrap();
            let data = r.bytes(usize::from(len), "").unwrap();
            ips.push(match rtype {
                TYPE_A => IpAddr::from(<[u8; 4]>::try_from(data).unwrap()),
                _ => IpAddr::from(<[u8; 16]>::try_from(data).unwrap()),
            });
        }
        (flags & 0xF, flags, ips)
    }

    #[test]
    fn a_query_parses_and_its_reply_carries_the_addresses() {
        let q = query(0x1234, "Web.default.svc.cluster.local", TYPE_A, None);
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.header.id, 0x1234);
        assert_eq!(parsed.name, "Web.default.svc.cluster.local");
        assert_eq!((parsed.qtype, parsed.edns), (TYPE_A, None));
        assert_eq!(parsed.udp_limit(), 512);
        let ips: Vec<IpAddr> = vec!["10.96.0.10".parse().unwrap()];
        let r = reply(&parsed, Rcode::NoError, true, &ips, 5, 512);
        assert_eq!(&r[..2], &[0x12, 0x34]);
        let (rcode, flags, answers) = decode(&r);
        assert_eq!(rcode, 0);
        assert!(flags & FLAG_QR != 0 && flags & FLAG_AA != 0 && flags & FLAG_RD != 0);
        assert_eq!(answers, ips);
        // The question is echoed as asked, case included.
        assert!(r.windows(3).any(|w| w == b"Web"));
    }

    #[test]
    fn edns_is_read_and_echoed_and_long_replies_are_truncated() {
        let q = query(7, "db.default.svc.cluster.local", TYPE_AAAA, Some(4096));
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.edns, Some(4096));
        assert_eq!(parsed.udp_limit(), usize::from(EDNS_PAYLOAD));
        let ips: Vec<IpAddr> = (0..100u16)
            .map(|i| IpAddr::from([0xfd78, 1, 0, 0, 0, 0, 0, i]))
            .collect();
        let full = reply(&parsed, Rcode::NoError, true, &ips, 5, 65535);
        assert_eq!(decode(&full).2.len(), 100);
        assert_eq!(u16::from_be_bytes([full[10], full[11]]), 1, "OPT echoed");
        let cut = reply(&parsed, Rcode::NoError, true, &ips, 5, parsed.udp_limit());
        let (_, flags, answers) = decode(&cut);
        assert!(flags & FLAG_TC != 0 && answers.is_empty());
        assert!(cut.len() <= parsed.udp_limit());
    }

    #[test]
    fn malformed_queries_say_what_and_where() {
        let good = query(9, "example.com", TYPE_A, None);
        assert_eq!(
            parse_query(&good[..5]),
            Err(ParseError::NoHeader { len: 5 })
        );
        // Cut inside the name.
        let err = parse_query(&good[..16]).unwrap_err();
        assert!(err.to_string().contains("label runs past the end"), "{err}");
        let formerr = err.reply().unwrap();
        assert_eq!(&formerr[..2], &[0, 9]);
        assert_eq!(decode(&formerr).0, Rcode::FormErr as u16);
        // Two questions.
        let mut two = good.clone();
        two[5] = 2;
        assert!(
            parse_query(&two)
                .unwrap_err()
                .to_string()
                .contains("question count")
        );
        // A pointer in the question.
        let mut ptr = good.clone();
        ptr[12] = 0xC0;
        assert!(
            parse_query(&ptr)
                .unwrap_err()
                .to_string()
                .contains("compressed")
        );
        // A response is never answered.
        let mut resp = good.clone();
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp), Err(ParseError::NotAQuery));
        assert_eq!(ParseError::NotAQuery.reply(), None);
        // An opcode other than QUERY.
        let mut notify = good.clone();
        notify[2] |= 4 << 3;
        let err = parse_query(&notify).unwrap_err();
        assert_eq!(decode(&err.reply().unwrap()).0, Rcode::NotImp as u16);
        // A name over 255 octets.
        let label = "a".repeat(63);
        let long = query(1, &[label.as_str(); 5].join("."), TYPE_A, None);
        assert!(parse_query(&long).unwrap_err().to_string().contains("255"));
        // An additional record that runs past the end.
        let mut opt = query(1, "example.com", TYPE_A, Some(1232));
        opt.truncate(opt.len() - 3);
        assert!(
            parse_query(&opt)
                .unwrap_err()
                .to_string()
                .contains("record")
        );
        // Garbage of every length never panics.
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse_query(&junk);
        }
    }

    #[test]
    fn odd_labels_are_escaped() {
        let mut q = query(1, "x.cluster.local", TYPE_A, None);
        // "x" becomes "." : the label's one byte is a dot.
        q[13] = b'.';
        assert_eq!(parse_query(&q).unwrap().name, "\\..cluster.local");
        q[13] = 0;
        assert_eq!(parse_query(&q).unwrap().name, "\\000.cluster.local");
    }
}
