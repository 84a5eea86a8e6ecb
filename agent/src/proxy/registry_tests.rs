use std::time::Duration;

use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
};
use weft_mesh::{testing, workload::Workload};
use weft_proto::discovery::v1 as pb;

use super::*;

const ROOT: &str = weft_mesh::policy::DEFAULT_ROOT_NAMESPACE;

fn workload(app: &str, sa: &str, ip: &str) -> Workload {
    testing::workload(app, "default", sa, app, ip)
}

fn index(resources: Vec<pb::Resource>) -> PolicyIndex {
    testing::index_in(ROOT, resources)
}

fn resource(name: &str, p: pb::Policy) -> pb::Resource {
    testing::policy_resource(name, "default", p)
}

/// A DENY of everything from `principal` to the server.
fn deny_from(principal: &str) -> pb::Resource {
    resource(
        "deny",
        pb::Policy {
            selector: Some(pb::Selector {
                match_labels: [("app".to_string(), "server".to_string())].into(),
                match_expressions: vec![],
            }),
            action: pb::PolicyAction::Deny.into(),
            source: pb::PolicySource::AuthorizationPolicy.into(),
            rules: vec![pb::Rule {
                from: vec![pb::Peer {
                    principals: vec![principal.into()],
                    ..Default::default()
                }],
                to: vec![],
            }],
            ..Default::default()
        },
    )
}

fn strict() -> pb::Resource {
    resource(
        "strict",
        pb::Policy {
            mode: pb::PeerAuthMode::Strict.into(),
            source: pb::PolicySource::PeerAuthentication.into(),
            ..Default::default()
        },
    )
}

struct Fixture {
    registry: Arc<ConnectionRegistry>,
    workloads: Arc<ArcSwap<WorkloadStore>>,
    policies: Arc<ArcSwap<PolicyIndex>>,
    listener: TcpListener,
}

impl Fixture {
    async fn new() -> Fixture {
        let workloads = Arc::new(ArcSwap::from_pointee(WorkloadStore::new(vec![
            workload("server", "server", "10.0.0.9"),
            workload("client", "client", "10.0.0.1"),
            workload("other", "other", "10.0.0.2"),
        ])));
        let policies = Arc::new(ArcSwap::from_pointee(index(vec![])));
        Fixture {
            registry: Arc::new(ConnectionRegistry::new(workloads.clone(), policies.clone())),
            workloads,
            policies,
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    /// A connected pair: the data path's socket (registered) and the far end.
    async fn pair(&self) -> (TcpStream, TcpStream) {
        let addr = self.listener.local_addr().unwrap();
        let (near, far) = tokio::join!(TcpStream::connect(addr), self.listener.accept());
        (near.unwrap(), far.unwrap().0)
    }

    fn register(
        &self,
        sa: Option<&str>,
        src_ip: &str,
        expires: Option<SystemTime>,
        socket: &TcpStream,
    ) -> Registration {
        let authorized = Authorized {
            identity: sa.map(|sa| {
                format!("spiffe://cluster.local/ns/default/sa/{sa}")
                    .parse()
                    .unwrap()
            }),
            identity_of_workload: false,
            src_ip: src_ip.parse().unwrap(),
            dst: WorkloadUid("server".into()),
            port: 8080,
            expires,
        };
        self.registry.register(authorized, &[socket]).unwrap()
    }

    fn closed(&self, reason: &'static str) -> u64 {
        self.registry
            .closed
            .get_or_create(&ClosedLabels { reason })
            .get()
    }
}

/// Whether the far end sees the connection end within a second.
async fn ended(far: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), far.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn a_new_deny_closes_what_it_denies_and_counts_it() {
    let f = Fixture::new().await;
    let (denied, mut denied_far) = f.pair().await;
    let (allowed, mut allowed_far) = f.pair().await;
    let _a = f.register(Some("other"), "10.0.0.2", None, &denied);
    let _b = f.register(Some("client"), "10.0.0.1", None, &allowed);
    assert_eq!(f.registry.recheck(SystemTime::now()), 0);
    assert_eq!(f.registry.live_count(), 2);

    f.policies.store(Arc::new(index(vec![deny_from(
        "cluster.local/ns/default/sa/other",
    )])));
    assert_eq!(f.registry.recheck(SystemTime::now()), 1);
    assert!(
        ended(&mut denied_far).await,
        "the denied connection is open"
    );
    assert!(
        !ended(&mut allowed_far).await,
        "the allowed connection was closed"
    );
    assert_eq!(f.closed("authorization_policy"), 1);
    assert_eq!(f.registry.live_count(), 1);
    // Counted once, however often it is checked again.
    assert_eq!(f.registry.recheck(SystemTime::now()), 0);
    assert_eq!(f.closed("authorization_policy"), 1);
}

#[tokio::test]
async fn strict_mode_closes_plaintext_and_keeps_mutual_tls() {
    let f = Fixture::new().await;
    let (plain, mut plain_far) = f.pair().await;
    let (mtls, mut mtls_far) = f.pair().await;
    let _a = f.register(None, "192.0.2.7", None, &plain);
    let _b = f.register(Some("client"), "10.0.0.1", None, &mtls);
    f.policies.store(Arc::new(index(vec![strict()])));
    assert_eq!(f.registry.recheck(SystemTime::now()), 1);
    assert!(ended(&mut plain_far).await);
    assert!(!ended(&mut mtls_far).await);
    assert_eq!(f.closed("peer_authentication_strict"), 1);
}

#[tokio::test]
async fn a_removed_destination_workload_closes_its_connections() {
    let f = Fixture::new().await;
    let (conn, mut far) = f.pair().await;
    let _a = f.register(Some("client"), "10.0.0.1", None, &conn);
    f.workloads.store(Arc::new(WorkloadStore::new(vec![workload(
        "client", "client", "10.0.0.1",
    )])));
    assert_eq!(f.registry.recheck(SystemTime::now()), 1);
    assert!(ended(&mut far).await);
    assert_eq!(f.closed("workload_removed"), 1);
}

#[tokio::test]
async fn an_expired_peer_certificate_closes_its_connections() {
    let f = Fixture::new().await;
    let (conn, mut far) = f.pair().await;
    let (fresh, mut fresh_far) = f.pair().await;
    let now = SystemTime::now();
    let _a = f.register(
        Some("client"),
        "10.0.0.1",
        Some(now + Duration::from_secs(60)),
        &conn,
    );
    let _b = f.register(
        Some("client"),
        "10.0.0.1",
        Some(now + Duration::from_secs(3600)),
        &fresh,
    );
    assert_eq!(f.registry.recheck(now), 0);
    assert_eq!(f.registry.recheck(now + Duration::from_secs(61)), 1);
    assert!(ended(&mut far).await);
    assert!(!ended(&mut fresh_far).await);
    assert_eq!(f.closed("certificate_expired"), 1);
}

/// A change that lands between a connection's admission and its registration is caught by
/// the check `register` makes.
#[tokio::test]
async fn registering_checks_against_the_current_policy() {
    let f = Fixture::new().await;
    f.policies.store(Arc::new(index(vec![deny_from(
        "cluster.local/ns/default/sa/other",
    )])));
    let (conn, mut far) = f.pair().await;
    let _a = f.register(Some("other"), "10.0.0.2", None, &conn);
    assert!(ended(&mut far).await);
    assert_eq!(f.registry.live_count(), 0);
}

/// The task wakes on a change, without waiting for its idle period.
#[tokio::test]
async fn the_recheck_task_acts_on_a_change() {
    let f = Fixture::new().await;
    let (conn, mut far) = f.pair().await;
    let _a = f.register(Some("other"), "10.0.0.2", None, &conn);
    let (trigger, watcher) = crate::drain::new();
    let task = tokio::spawn(f.registry.clone().run(watcher));
    f.policies.store(Arc::new(index(vec![deny_from(
        "cluster.local/ns/default/sa/other",
    )])));
    f.registry.changed();
    assert!(ended(&mut far).await);
    drop(trigger);
    task.await.unwrap();
}

/// A same-node connection's identity is its source workload's: once that workload is gone,
/// the connection has no identity and STRICT closes it.
#[tokio::test]
async fn a_same_node_source_whose_workload_goes_is_held_to_strict() {
    let f = Fixture::new().await;
    f.policies.store(Arc::new(index(vec![strict()])));
    let (conn, mut far) = f.pair().await;
    let authorized = Authorized {
        identity: Some(
            "spiffe://cluster.local/ns/default/sa/client"
                .parse()
                .unwrap(),
        ),
        identity_of_workload: true,
        src_ip: "10.0.0.1".parse().unwrap(),
        dst: WorkloadUid("server".into()),
        port: 8080,
        expires: None,
    };
    let _a = f.registry.register(authorized, &[&conn]).unwrap();
    assert_eq!(f.registry.recheck(SystemTime::now()), 0);
    f.workloads.store(Arc::new(WorkloadStore::new(vec![workload(
        "server", "server", "10.0.0.9",
    )])));
    assert_eq!(f.registry.recheck(SystemTime::now()), 1);
    assert!(ended(&mut far).await);
    assert_eq!(f.closed("peer_authentication_strict"), 1);
}
