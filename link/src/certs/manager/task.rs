//! The renewal loop of one identity: request, verify, publish, sleep until renewal is due.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::UnixTime;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::{CertError, CertManagerOptions, CertState, MAX_SLEEP_STEP};
use crate::certs::{SignRequest, Signer};
use crate::control::Backoff;
use crate::identity::SpiffeId;
use crate::tls::{CertResolver, Certificate, TrustBundle};

/// The renewal loop of one identity; the only writer of its state.
pub(super) struct Task {
    pub(super) identity: SpiffeId,
    pub(super) signer: Arc<dyn Signer>,
    pub(super) options: CertManagerOptions,
    pub(super) state: watch::Sender<CertState>,
}

/// A certificate checked and ready to publish.
struct Issued {
    cert: Certificate,
    bundle: TrustBundle,
    not_before: SystemTime,
    /// Where the usable lifetime starts: the request, unless `not_before` is later.
    lifetime_start: SystemTime,
}

impl Task {
    pub(super) async fn run(self, stop: oneshot::Receiver<()>) {
        let identity = self.identity.clone();
        tokio::select! {
            _ = stop => {}
            () = self.renew_forever() => {}
        }
        debug!(%identity, "last handle dropped; certificate renewal stopped");
    }

    async fn renew_forever(&self) {
        let mut backoff = Backoff::new(self.options.initial_backoff, self.options.max_backoff);
        // Refusals are retried at the slowest pace from the start.
        let mut refused = Backoff::new(self.options.max_backoff, self.options.max_backoff);
        loop {
            self.state.send_modify(|state| state.renewing = true);
            let next = match self.until_expiry(self.request()).await {
                Ok(issued) => self.publish(issued, &mut backoff),
                Err(error) => {
                    let delay = if error.retryable() {
                        backoff.next_delay()
                    } else {
                        refused.next_delay()
                    };
                    self.failed(&error, delay)
                }
            };
            self.until_expiry(sleep_until(next)).await;
        }
    }

    /// Runs `fut`, clearing the certificate when it expires in the meantime.
    async fn until_expiry<F: Future>(&self, fut: F) -> F::Output {
        tokio::pin!(fut);
        loop {
            let expiry = self
                .state
                .borrow()
                .certificate
                .as_ref()
                .map(|cert| cert.not_after());
            let expired = async {
                match expiry {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                out = &mut fut => return out,
                () = expired => self.expire(),
            }
        }
    }

    /// One request: a new key, a CSR, the CA's answer, checked.
    async fn request(&self) -> Result<Issued, CertError> {
        let requested_at = SystemTime::now();
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CertError::Csr {
                identity: self.identity.clone(),
                source,
            })?;
        let csr_pem = csr(&self.identity, &key).map_err(|source| CertError::Csr {
            identity: self.identity.clone(),
            source,
        })?;
        let request = SignRequest {
            csr_pem,
            identity: self.identity.clone(),
            ttl: self.options.ttl,
        };
        let after = self.options.request_timeout;
        let signed = tokio::time::timeout(after, self.signer.sign(request))
            .await
            .map_err(|_| CertError::Timeout { after })?
            .map_err(|source| CertError::Sign { source })?;

        let cert = Certificate::from_pem(
            signed.chain_pem.join("\n").as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .map_err(|source| CertError::Certificate { source })?;
        if cert.identity() != &self.identity {
            return Err(CertError::WrongIdentity {
                requested: self.identity.clone(),
                issued: cert.identity().clone(),
            });
        }
        let bundle = TrustBundle::from_pem(
            self.identity.trust_domain().clone(),
            signed.trust_roots_pem.join("\n").as_bytes(),
        )
        .map_err(|source| CertError::TrustRoots { source })?;
        // Only the clock of a peer can say whether it accepts the certificate; this checks
        // what the times cannot change, so that a CA/roots mismatch is reported here and not
        // as handshake failures all over the mesh.
        let not_before = leaf_not_before(&cert).unwrap_or(requested_at);
        let now = SystemTime::now();
        if cert.not_after() <= now {
            return Err(CertError::AlreadyExpired {
                not_after: fmt_time(cert.not_after()),
            });
        }
        verify_chain(&cert, &bundle, now.max(not_before))?;
        Ok(Issued {
            cert,
            bundle,
            not_before,
            // X.509 times are whole seconds; compare like with like.
            lifetime_start: not_before.max(whole_seconds(requested_at)),
        })
    }

    /// Serves a new certificate; returns when to renew it.
    fn publish(&self, issued: Issued, backoff: &mut Backoff) -> SystemTime {
        let Issued {
            cert,
            bundle,
            not_before,
            lifetime_start,
        } = issued;
        let not_after = cert.not_after();
        let renew_at = renewal_point(lifetime_start, not_after, self.options.renewal_fraction);
        let now = SystemTime::now();
        let next = if renew_at > now {
            backoff.reset();
            renew_at
        } else {
            // Renewing at once would loop as fast as the CA answers.
            let delay = backoff.next_delay();
            warn!(
                identity = %self.identity,
                not_before = %fmt_time(not_before),
                not_after = %fmt_time(not_after),
                retry_in = ?delay,
                "the certificate was issued past its renewal point; \
                 is the CA's lifetime too short or a clock wrong?"
            );
            now + delay
        };

        let resolver = match self.state.borrow().resolver.clone() {
            Some(resolver) => match resolver.rotate(cert.clone()) {
                Ok(()) => resolver,
                // Cannot happen (the identity was checked), but a new resolver is the safe
                // answer: TLS configs built on the old one keep the old certificate.
                Err(error) => {
                    warn!(identity = %self.identity, %error, "replacing the certificate resolver");
                    Arc::new(CertResolver::new(cert.clone()))
                }
            },
            None => Arc::new(CertResolver::new(cert.clone())),
        };
        info!(
            identity = %self.identity,
            not_after = %fmt_time(not_after),
            renew_at = %fmt_time(next),
            "certificate issued"
        );
        self.state.send_modify(|state| {
            *state = CertState {
                certificate: Some(Arc::new(cert)),
                not_before: Some(not_before),
                trust_bundle: Some(Arc::new(bundle)),
                resolver: Some(resolver),
                last_error: None,
                next_renewal: Some(next),
                renewing: false,
                expired_at: None,
            };
        });
        next
    }

    /// Records a failed request; returns when to retry.
    fn failed(&self, error: &CertError, delay: Duration) -> SystemTime {
        let next = SystemTime::now() + delay;
        let text = crate::error_chain(error);
        let kept_until = self
            .state
            .borrow()
            .certificate
            .as_ref()
            .map(|cert| fmt_time(cert.not_after()));
        match &kept_until {
            Some(kept_until) => warn!(
                identity = %self.identity,
                error = %text,
                %kept_until,
                retry_in = ?delay,
                "certificate renewal failed; serving the current certificate until it expires"
            ),
            None => warn!(
                identity = %self.identity,
                error = %text,
                retry_in = ?delay,
                "certificate request failed; the identity has no certificate"
            ),
        }
        self.state.send_modify(|state| {
            state.last_error = Some(text);
            state.next_renewal = Some(next);
            state.renewing = false;
        });
        next
    }

    fn expire(&self) {
        let now = SystemTime::now();
        self.state.send_if_modified(|state| {
            let Some(cert) = state.certificate.take_if(|cert| cert.not_after() <= now) else {
                return false;
            };
            warn!(
                identity = %self.identity,
                not_after = %fmt_time(cert.not_after()),
                last_error = state.last_error.as_deref().unwrap_or("none"),
                "certificate expired before it could be renewed; new connections of this \
                 identity fail until a certificate is issued"
            );
            state.not_before = None;
            state.expired_at = Some(cert.not_after());
            true
        });
    }
}

/// A CSR for `identity`: the URI SAN and nothing else; the CA decides usages and lifetime.
fn csr(identity: &SpiffeId, key: &KeyPair) -> Result<String, rcgen::Error> {
    let mut params = CertificateParams::default();
    // The default carries a placeholder common name; an SVID's subject says nothing.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(identity.as_str())?)];
    params.serialize_request(key)?.pem()
}

/// The chain must lead to `bundle` and allow both TLS roles, checked as the verifiers of
/// `crate::tls` will (webpki with the provider's algorithms).
fn verify_chain(cert: &Certificate, bundle: &TrustBundle, at: SystemTime) -> Result<(), CertError> {
    let untrusted = |reason: String| CertError::Untrusted { reason };
    let Some((leaf, intermediates)) = cert.chain().split_first() else {
        return Err(untrusted("the chain is empty".to_owned()));
    };
    let leaf = webpki::EndEntityCert::try_from(leaf).map_err(|e| untrusted(e.to_string()))?;
    let time = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
    let algs = crate::tls::provider().signature_verification_algorithms;
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(
            algs.all,
            bundle.anchors(),
            intermediates,
            time,
            usage,
            None,
            None,
        )
        .map_err(|e| untrusted(e.to_string()))?;
    }
    Ok(())
}

/// The leaf's `notBefore`. `Certificate` keeps only `not_after`, and the renewal point needs
/// both ends of the issued lifetime.
fn leaf_not_before(cert: &Certificate) -> Option<SystemTime> {
    let (_, leaf) = x509_parser::parse_x509_certificate(cert.chain().first()?).ok()?;
    let secs = leaf.validity().not_before.timestamp();
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

fn renewal_point(not_before: SystemTime, not_after: SystemTime, fraction: f64) -> SystemTime {
    match not_after.duration_since(not_before) {
        Ok(lifetime) => not_before + lifetime.mul_f64(fraction),
        Err(_) => not_before,
    }
}

/// Sleeps until the wall clock reads `at`, in steps (see [`MAX_SLEEP_STEP`]).
async fn sleep_until(at: SystemTime) {
    while let Ok(left) = at.duration_since(SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(MAX_SLEEP_STEP)).await;
    }
}

/// As `openssl x509 -dates` prints it, for logs.
fn fmt_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    x509_parser::time::ASN1Time::from_timestamp(secs)
        .map_or_else(|_| format!("{t:?}"), |time| time.to_string())
}
