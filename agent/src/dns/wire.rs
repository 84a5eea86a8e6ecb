//! The DNS wire format through hickory-proto (no default features: the message codec only):
//! a query is checked and parsed into the one question and its EDNS payload size, and
//! answers are written as A and AAAA records. Forwarded queries and answers travel as
//! opaque bytes.
//!
//! The header is read by hand first: a message too short for one gets no answer, and the
//! section counts are checked against the message's length before hickory-proto allocates
//! for them, so a 12-byte query cannot make the proxy reserve room for 65535 questions.
//! Nothing here panics on input, and every failure says what is wrong.

use std::net::IpAddr;

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query as Question, ResponseCode},
    rr::{
        DNSClass, RData, Record,
        rdata::{A, AAAA},
    },
};

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
/// The smallest question: a root name, type and class.
const MIN_QUESTION: usize = 5;
/// The smallest resource record: a root name, type, class, TTL and data length.
const MIN_RECORD: usize = 11;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;

const FLAG_QR: u16 = 0x8000;
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

impl Rcode {
    fn code(self) -> ResponseCode {
        match self {
            Rcode::NoError => ResponseCode::NoError,
            Rcode::FormErr => ResponseCode::FormErr,
            Rcode::ServFail => ResponseCode::ServFail,
            Rcode::NxDomain => ResponseCode::NXDomain,
            Rcode::NotImp => ResponseCode::NotImp,
            Rcode::Refused => ResponseCode::Refused,
        }
    }
}

/// The header fields a reply echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub header: Header,
    /// The question's name, dotted, with the final dot; a '.' or '\' inside a label, and
    /// bytes outside printable ASCII, are escaped, so no odd label can pass for a name of
    /// the cluster.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question as received, echoed in replies (so the name keeps its case).
    question: Question,
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
    #[error("malformed query: {what}")]
    Malformed { header: Header, what: String },
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

/// The header of a query, without reading further: `None` for fewer bytes than a header or
/// a response.
pub fn query_header(msg: &[u8]) -> Option<Header> {
    let head = msg.get(..HEADER_LEN)?;
    let header = Header {
        id: u16::from_be_bytes([head[0], head[1]]),
        flags: u16::from_be_bytes([head[2], head[3]]),
    };
    (header.flags & FLAG_QR == 0).then_some(header)
}

/// Parses a query: exactly one question, answer and authority sections (empty in any real
/// query) read and ignored, at most one OPT record.
pub fn parse_query(msg: &[u8]) -> Result<Query, ParseError> {
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
    let malformed = |what: String| ParseError::Malformed { header, what };
    let count = |i: usize| usize::from(u16::from_be_bytes([msg[i], msg[i + 1]]));
    if count(4) != 1 {
        return Err(malformed(format!("{} questions, not 1", count(4))));
    }
    let records = count(6) + count(8) + count(10);
    if HEADER_LEN + MIN_QUESTION + records * MIN_RECORD > msg.len() {
        return Err(malformed(format!(
            "{records} records cannot fit in {} bytes",
            msg.len()
        )));
    }
    let parsed = Message::from_vec(msg).map_err(|err| malformed(err.to_string()))?;
    let Some(question) = parsed.queries.into_iter().next() else {
        return Err(malformed("no question".to_owned()));
    };
    Ok(Query {
        header,
        name: question.name().to_ascii(),
        qtype: u16::from(question.query_type()),
        qclass: u16::from(question.query_class()),
        question,
        edns: parsed.edns.map(|e| e.max_payload()),
    })
}

impl Query {
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
        matches!(DNSClass::from(self.qclass), DNSClass::IN | DNSClass::ANY)
    }
}

/// A reply to `query` with `rcode` and one A or AAAA record per address, authoritative when
/// `authoritative` (names of the cluster). A reply longer than `limit` loses its answers and
/// says it was truncated (TC), so the client asks again over TCP.
pub fn reply(
    query: &Query,
    rcode: Rcode,
    authoritative: bool,
    addresses: &[IpAddr],
    ttl: u32,
    limit: usize,
) -> Vec<u8> {
    let build = |addresses: &[IpAddr], truncated: bool| {
        let mut msg = Message::new(query.header.id, MessageType::Response, OpCode::Query);
        msg.metadata.recursion_desired = query.header.flags & FLAG_RD != 0;
        msg.metadata.recursion_available = true;
        msg.metadata.authoritative = authoritative;
        msg.metadata.truncation = truncated;
        msg.metadata.response_code = rcode.code();
        msg.add_query(query.question.clone());
        for ip in addresses {
            let name = query.question.name().clone();
            let rdata = match ip {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            msg.add_answer(Record::from_rdata(name, ttl, rdata));
        }
        if query.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            msg.set_edns(edns);
        }
        msg.to_vec()
    };
    match build(addresses, false) {
        Ok(full) if full.len() <= limit => full,
        // Too long (or not encodable): no answers, TC set; failing that, the bare header.
        _ => build(&[], true).unwrap_or_else(|_| header_only(query.header, Rcode::ServFail)),
    }
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

    const FLAG_AA: u16 = 0x0400;

    /// A query for `name` of `qtype`, with an OPT record when `edns` is set, written byte by
    /// byte (not with the codec under test).
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
        q.extend_from_slice(&1u16.to_be_bytes());
        if let Some(size) = edns {
            q.push(0);
            q.extend_from_slice(&41u16.to_be_bytes());
            q.extend_from_slice(&size.to_be_bytes());
            q.extend_from_slice(&[0; 6]);
        }
        q
    }

    /// (rcode, flags, the answers' addresses) of a reply.
    pub fn decode(reply: &[u8]) -> (u16, u16, Vec<IpAddr>) {
        let flags = u16::from_be_bytes([reply[2], reply[3]]);
        let msg = Message::from_vec(reply).unwrap();
        let ips = msg
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        (flags & 0xF, flags, ips)
    }

    #[test]
    fn a_query_parses_and_its_reply_carries_the_addresses() {
        let q = query(0x1234, "Web.default.svc.cluster.local", TYPE_A, None);
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.header.id, 0x1234);
        assert_eq!(parsed.name, "Web.default.svc.cluster.local.");
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
    fn malformed_queries_say_what() {
        let formerr = |msg: &[u8]| {
            let err = parse_query(msg).unwrap_err();
            let reply = err.reply().unwrap_or_else(|| panic!("{err}: no reply"));
            assert_eq!(&reply[..2], &msg[..2], "{err}: the query's id");
            assert_eq!(decode(&reply).0, Rcode::FormErr as u16, "{err}");
            err.to_string()
        };
        let good = query(9, "example.com", TYPE_A, None);
        assert_eq!(
            parse_query(&good[..5]),
            Err(ParseError::NoHeader { len: 5 })
        );
        // Cut inside the name.
        formerr(&good[..16]);
        // Two questions, or none.
        let mut two = good.clone();
        two[5] = 2;
        assert!(formerr(&two).contains("2 questions"));
        let mut none = good.clone();
        none[5] = 0;
        assert!(formerr(&none).contains("0 questions"));
        // Record counts that cannot fit: refused before anything is allocated for them.
        let mut counts = good.clone();
        counts[10] = 0xFF;
        counts[11] = 0xFF;
        assert!(formerr(&counts).contains("65535 records"));
        // Two OPT records.
        let mut two_opt = query(1, "example.com", TYPE_A, Some(1232));
        let opt = two_opt[two_opt.len() - 11..].to_vec();
        two_opt.extend_from_slice(&opt);
        two_opt[11] = 2;
        formerr(&two_opt);
        // An additional record that runs past the end.
        let mut cut = query(1, "example.com", TYPE_A, Some(1232));
        cut.truncate(cut.len() - 3);
        formerr(&cut);
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
        // Garbage of every length never panics.
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse_query(&junk);
        }
    }

    #[test]
    fn odd_labels_are_escaped() {
        let mut q = query(1, "x.cluster.local", TYPE_A, None);
        // The first label's one byte becomes a dot, then a NUL.
        q[13] = b'.';
        assert_eq!(parse_query(&q).unwrap().name, "\\..cluster.local.");
        q[13] = 0;
        assert_eq!(parse_query(&q).unwrap().name, "\\000.cluster.local.");
    }
}
