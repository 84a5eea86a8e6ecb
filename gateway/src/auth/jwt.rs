//! Verifying a bearer JWT (RFC 7519) against a provider's keys, and reading its claims.
//!
//! The token's shape, header and issuer are read before any key is touched, so malformed
//! input, `alg: none` and HMAC tokens cost a few string checks and no signature work.

use std::str::FromStr;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use super::{
    error::Rejection,
    jwks::{KeySet, VerifyKey},
    policy::JwtProvider,
};

/// Largest token looked at. Identity providers' tokens are 1-2 KiB; 8 KiB leaves room for
/// many claims while bounding the base64 and JSON work an unauthenticated caller can cause.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Keys tried for a token without `kid` (each try is a signature verification).
pub const MAX_KEYS_TRIED: usize = 8;
/// Scopes read from a token; more are ignored.
pub const MAX_SCOPES: usize = 64;

/// What is read from a token before its signature is checked; trusted for nothing but
/// choosing the provider and the key.
#[derive(Debug)]
pub(crate) struct Unverified {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    pub(crate) iss: String,
}

impl Unverified {
    pub(crate) fn parse(token: &str) -> Result<Self, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::TooLarge);
        }
        let mut segments = token.split('.');
        let (Some(header), Some(payload), Some(_signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(Rejection::Malformed);
        };
        if header.is_empty()
            || payload.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(Rejection::Malformed);
        }
        #[derive(serde::Deserialize)]
        struct Header {
            alg: String,
            kid: Option<String>,
            crit: Option<Value>,
        }
        let header: Header = decode_segment(header)?;
        // RFC 7515 section 4.1.11: extensions we do not understand must be refused.
        if header.crit.is_some() {
            return Err(Rejection::UnsupportedAlgorithm);
        }
        let alg = match header.alg.as_str() {
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384"
            | "EdDSA" => {
                Algorithm::from_str(&header.alg).map_err(|_| Rejection::UnsupportedAlgorithm)?
            }
            // `none` and HMAC (a public key used as an HMAC secret is the classic forgery)
            // among them.
            _ => return Err(Rejection::UnsupportedAlgorithm),
        };
        #[derive(serde::Deserialize)]
        struct Payload {
            iss: Option<Value>,
        }
        let payload: Payload = decode_segment(payload)?;
        let iss = match payload.iss {
            Some(Value::String(iss)) => iss,
            Some(_) => return Err(Rejection::BadClaim("iss")),
            None => return Err(Rejection::MissingClaim("iss")),
        };
        Ok(Unverified {
            alg,
            kid: header.kid,
            iss,
        })
    }
}

fn decode_segment<T: serde::de::DeserializeOwned>(segment: &str) -> Result<T, Rejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Rejection::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Rejection::Malformed)
}

/// Why a token did not verify against a key set.
#[derive(Debug)]
pub(crate) enum VerifyError {
    /// The token names a `kid` the set does not have: worth fetching the set again.
    UnknownKid,
    Rejected(Rejection),
}

/// Checks the signature with the key the token names (or each fitting key when it names
/// none), then `exp`, `nbf`, `iss` and `aud`.
pub(crate) fn verify(
    token: &str,
    unverified: &Unverified,
    keys: &KeySet,
    provider: &JwtProvider,
) -> Result<Map<String, Value>, VerifyError> {
    let alg = unverified.alg;
    let fits = |k: &&VerifyKey| k.kind.verifies(alg) && k.alg.is_none_or(|a| a == alg);
    let candidates: Vec<&VerifyKey> = match &unverified.kid {
        Some(kid) => {
            let named: Vec<&VerifyKey> = keys
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .collect();
            if named.is_empty() {
                return Err(VerifyError::UnknownKid);
            }
            let fitting: Vec<&VerifyKey> = named.into_iter().filter(fits).collect();
            if fitting.is_empty() {
                return Err(VerifyError::Rejected(Rejection::AlgorithmMismatch));
            }
            fitting
        }
        None => {
            let fitting: Vec<&VerifyKey> =
                keys.keys.iter().filter(fits).take(MAX_KEYS_TRIED).collect();
            if fitting.is_empty() {
                return Err(VerifyError::Rejected(Rejection::UnknownKey));
            }
            fitting
        }
    };
    let validation = validation(alg, provider);
    for key in candidates {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
            Err(e) => return Err(VerifyError::Rejected(rejection(e.kind()))),
        }
    }
    Err(VerifyError::Rejected(Rejection::BadSignature))
}

fn validation(alg: Algorithm, provider: &JwtProvider) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = provider.clock_skew.as_millis().div_ceil(1000) as u64;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[provider.issuer.as_str()]);
    if provider.audiences.is_empty() {
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp", "iss"]);
    } else {
        v.set_audience(&provider.audiences);
        // Without this a token with no `aud` at all would pass the audience check.
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
    }
    v
}

fn rejection(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::InvalidSignature => Rejection::BadSignature,
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::InvalidAudience => Rejection::WrongAudience,
        ErrorKind::InvalidIssuer => Rejection::UnknownIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            Rejection::AlgorithmMismatch
        }
        ErrorKind::MissingRequiredClaim(c) => Rejection::MissingClaim(claim_name(c)),
        ErrorKind::InvalidClaimFormat(c) => Rejection::BadClaim(claim_name(c)),
        _ => Rejection::Malformed,
    }
}

fn claim_name(c: &str) -> &'static str {
    match c {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "required",
    }
}

// === claims ===

/// A claim's value as text, for strings, numbers and booleans only.
pub(crate) fn claim_text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Scopes from a space-separated string (RFC 8693 `scope`) or an array of strings (`scp`
/// of some providers).
pub(crate) fn scopes(claims: &Map<String, Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::String(s)) => s
            .split_ascii_whitespace()
            .take(MAX_SCOPES)
            .map(str::to_string)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .take(MAX_SCOPES)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// The configured claim headers; a claim that is absent, structured, or not a valid header
/// value is left out (the client's copy of the header is already gone).
pub(crate) fn claim_headers(
    claims: &Map<String, Value>,
    mapping: &[(String, HeaderName)],
) -> Vec<(HeaderName, HeaderValue)> {
    mapping
        .iter()
        .filter_map(|(claim, header)| {
            let text = claim_text(claims, claim)?;
            match HeaderValue::from_str(&text) {
                Ok(value) => Some((header.clone(), value)),
                Err(_) => {
                    tracing::debug!(%claim, %header, "claim is not a valid header value; not forwarded");
                    None
                }
            }
        })
        .collect()
}
