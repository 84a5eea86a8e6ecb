//! Consumers indexed by what identifies them: API-key hash and JWT consumer-claim value.

use std::{collections::HashMap, sync::Arc};

use weft_proto::discovery::v1 as pb;

use super::error::AuthConfigError;

/// An authenticated caller, as the rest of the gateway sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The plan (`namespace/name`) it subscribes to.
    pub plan: Option<Arc<str>>,
}

impl std::fmt::Display for ConsumerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// SHA-256 of an API key. Keys are never held, only their hashes, so a lookup by hash needs
/// no constant-time comparison: the hash an attacker varies says nothing about stored keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// The hash of a presented key.
    pub fn of(key: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        KeyHash(out)
    }

    /// The hash as 64 lower-case hex digits, as `Consumer.apiKeySha256` holds it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi << 4 | lo) as u8;
        }
        Some(KeyHash(out))
    }
}

/// The consumers of one namespace.
#[derive(Debug, Default)]
struct Namespace {
    by_key: HashMap<KeyHash, ConsumerRef>,
    by_subject: HashMap<String, ConsumerRef>,
}

/// Every consumer, by namespace.
#[derive(Debug, Default)]
pub struct Consumers {
    namespaces: HashMap<Arc<str>, Namespace>,
}

impl Consumers {
    /// Indexes consumers; a key hash or subject claimed twice in a namespace is refused, since
    /// the caller could not be told apart.
    pub fn new<'a>(
        consumers: impl IntoIterator<Item = &'a pb::Consumer>,
    ) -> Result<Self, AuthConfigError> {
        let mut namespaces: HashMap<Arc<str>, Namespace> = HashMap::new();
        for c in consumers {
            if c.name.is_empty() || c.namespace.is_empty() {
                return Err(AuthConfigError::ConsumerName {
                    consumer: format!("{}/{}", c.namespace, c.name),
                });
            }
            let consumer = ConsumerRef {
                namespace: c.namespace.as_str().into(),
                name: c.name.as_str().into(),
                plan: (!c.plan.is_empty())
                    .then(|| super::policy::qualified(&c.namespace, &c.plan).into()),
            };
            let ns = namespaces.entry(consumer.namespace.clone()).or_default();
            for hex in &c.api_key_sha256 {
                let hash =
                    KeyHash::from_hex(hex.trim()).ok_or_else(|| AuthConfigError::KeyHash {
                        consumer: consumer.to_string(),
                        value: hex.clone(),
                    })?;
                if let Some(other) = ns.by_key.insert(hash, consumer.clone())
                    && other != consumer
                {
                    return Err(AuthConfigError::DuplicateKey {
                        first: other.to_string(),
                        second: consumer.to_string(),
                    });
                }
            }
            for subject in &c.jwt_subjects {
                if let Some(other) = ns.by_subject.insert(subject.clone(), consumer.clone())
                    && other != consumer
                {
                    return Err(AuthConfigError::DuplicateSubject {
                        first: other.to_string(),
                        second: consumer.to_string(),
                        subject: subject.clone(),
                    });
                }
            }
        }
        Ok(Consumers { namespaces })
    }

    /// The consumer of `namespace` holding the key with this hash.
    pub fn by_key(&self, namespace: &str, hash: &KeyHash) -> Option<&ConsumerRef> {
        self.namespaces.get(namespace)?.by_key.get(hash)
    }

    /// The consumer of `namespace` whose JWT consumer claim has this value.
    pub fn by_subject(&self, namespace: &str, subject: &str) -> Option<&ConsumerRef> {
        self.namespaces.get(namespace)?.by_subject.get(subject)
    }
}
