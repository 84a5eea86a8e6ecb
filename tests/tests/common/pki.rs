//! Identities and certificates for tests that stand in for an agent on the HBONE port.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
};
use tokio::net::TcpSocket;
use weft_link::hbone::SocketFactory;
use weft_link::identity::SpiffeId;
use weft_link::tls::Certificate;
use weft_tests::testbed::Testbed;

/// The testbed's trust domain.
pub const TD: &str = "cluster.local";

/// The SPIFFE ID of `pod` in the testbed's trust domain.
pub fn id_of(tb: &Testbed, pod: &str) -> SpiffeId {
    let p = tb.pod(pod).expect("a pod of the testbed");
    let td = TD.parse().expect("a valid trust domain");
    SpiffeId::new(td, &p.namespace, &p.service_account).expect("a valid SPIFFE ID")
}

/// Creates client sockets inside a network namespace (the test stands in for an agent).
#[derive(Debug)]
pub struct NetnsSockets(pub PathBuf);

impl SocketFactory for NetnsSockets {
    fn new_tcp(&self, dst: SocketAddr) -> std::io::Result<TcpSocket> {
        let target = std::fs::File::open(&self.0)?;
        let home = std::fs::File::open("/proc/thread-self/ns/net")?;
        nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::other)?;
        let socket = match dst {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        };
        nix::sched::setns(home.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::other)?;
        socket
    }
}

/// An SVID for `id` from `issuer`, valid from `from` for `lifetime`.
pub fn svid(
    issuer: &Issuer<'_, KeyPair>,
    id: &SpiffeId,
    from: time::OffsetDateTime,
    lifetime: time::Duration,
) -> Certificate {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generating a key");
    let mut params = CertificateParams::default();
    let uri = id
        .as_str()
        .try_into()
        .expect("a SPIFFE ID is an IA5 string");
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params.not_before = from;
    params.not_after = from + lifetime;
    let cert = params.signed_by(&key, issuer).expect("signing the SVID");
    Certificate::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
        .expect("the SVID loads")
}
