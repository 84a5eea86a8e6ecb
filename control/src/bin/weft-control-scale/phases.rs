//! The measured phases: every subscriber's initial sync, then policy changes one at a time.
//! Each phase consumes the fleet's events in one task, so timestamps are taken where the
//! updates were applied and nothing here competes for a lock with the subscribers.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::transport::Channel;
use weft_proto::discovery::v1::{self as pb, ResourceType, discovery_client::DiscoveryClient};

use crate::{
    control::ControlProcess,
    fleet::{Event, Fleet},
    mesh::Mesh,
    report::{self, Percentiles, Round, TypeBytes, TypeCounts},
};

/// How often a wait checks that the control plane is still alive.
const ALIVE_CHECK: Duration = Duration::from_secs(1);
/// After every subscriber applied a change, how long to keep listening for updates that
/// should not come (a duplicate, a snapshot, another type).
const SETTLE: Duration = Duration::from_millis(300);
/// How long the control plane's Status may take to show every ACK.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Limits and sizes of a phase.
pub struct Plan {
    pub subscribers: usize,
    /// Subscribers connecting at once (started but not yet synced).
    pub connect_concurrency: usize,
    pub sync_timeout: Duration,
    pub round_timeout: Duration,
}

/// The next event, or `None` at `deadline`; fails if the control plane died.
async fn next_event(
    fleet: &mut Fleet,
    cp: &mut ControlProcess,
    deadline: Instant,
) -> anyhow::Result<Option<Event>> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let wait = (deadline - now).min(ALIVE_CHECK);
        match tokio::time::timeout(wait, fleet.events.recv()).await {
            Ok(Some(event)) => return Ok(Some(event)),
            Ok(None) => bail!("every subscriber's event channel closed"),
            Err(_) => cp.check_alive()?,
        }
    }
}

fn bit(ty: ResourceType) -> u8 {
    match ty {
        ResourceType::Workload => 1,
        ResourceType::Service => 2,
        ResourceType::Policy => 4,
        _ => 8,
    }
}
const ALL_TYPES: u8 = 1 | 2 | 4;

/// What the initial sync measured; `version` is the configuration version subscribers hold.
pub struct Synced {
    pub sync: report::Sync,
    pub version: u64,
}

/// Starts every subscriber (at most `connect_concurrency` connecting at a time) and waits
/// until each has applied a snapshot of every type.
pub async fn sync(
    plan: &Plan,
    cp: &mut ControlProcess,
    fleet: &mut Fleet,
    failures: &mut Vec<String>,
) -> anyhow::Result<Synced> {
    let n = plan.subscribers;
    let limit = match plan.connect_concurrency {
        0 => n,
        c => c,
    };
    let start = Instant::now();
    let deadline = start + plan.sync_timeout;
    let mut started_at = Vec::with_capacity(n);
    let mut types = vec![0u8; n];
    let mut bytes = vec![TypeBytes::default(); n];
    let mut took = Vec::with_capacity(n);
    let mut counts = TypeCounts::default();
    let mut version = 0;
    let (mut synced, mut unexpected) = (0, 0);
    while synced < n {
        while fleet.len() < n && fleet.len() - synced < limit {
            started_at.push(Instant::now());
            fleet.spawn()?;
        }
        let Some(e) = next_event(fleet, cp, deadline).await? else {
            break;
        };
        let i = e.subscriber;
        if !e.snapshot || types[i] & bit(e.resource_type) != 0 {
            // A delta (nothing changed) or a second snapshot (a reconnect) during sync.
            unexpected += 1;
            continue;
        }
        types[i] |= bit(e.resource_type);
        let b = &mut bytes[i];
        let size = e.wire_bytes as u64;
        match e.resource_type {
            ResourceType::Workload => (b.workload, counts.workload) = (size, e.resources),
            ResourceType::Service => (b.service, counts.service) = (size, e.resources),
            ResourceType::Policy => (b.policy, counts.policy) = (size, e.resources),
            _ => {}
        }
        b.total += size;
        version = version.max(e.version);
        if types[i] == ALL_TYPES {
            took.push(e.at - started_at[i]);
            synced += 1;
        }
    }
    let wall = start.elapsed();
    if synced < n {
        failures.push(format!(
            "{} of {n} subscriber(s) never synced within {:?} ({} started)",
            n - synced,
            plan.sync_timeout,
            fleet.len()
        ));
    }
    if unexpected > 0 {
        failures.push(format!(
            "{unexpected} unexpected update(s) during the initial sync (deltas, or repeated \
             snapshots after a reconnect)"
        ));
    }
    let largest = bytes
        .iter()
        .max_by_key(|b| b.total)
        .copied()
        .unwrap_or_default();
    Ok(Synced {
        sync: report::Sync {
            wall_ms: report::ms(wall),
            per_subscriber: Percentiles::of(&took),
            snapshot_bytes: largest,
            snapshot_bytes_all: bytes.iter().map(|b| b.total).sum(),
            resources: counts,
        },
        version,
    })
}

/// Problems seen in one round, counted rather than listed per subscriber.
#[derive(Default)]
struct Tally {
    snapshots: usize,
    wrong_shape: usize,
    duplicates: usize,
    other: usize,
}

/// Rewrites one policy and times its arrival at every subscriber.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would add nothing"
)]
pub async fn round(
    number: usize,
    plan: &Plan,
    cp: &mut ControlProcess,
    fleet: &mut Fleet,
    mesh: &mut Mesh,
    admin: &mut DiscoveryClient<Channel>,
    since_version: u64,
    snapshot_bytes: u64,
    failures: &mut Vec<String>,
) -> anyhow::Result<Round> {
    let n = plan.subscribers;
    let staged = mesh.stage_change(number - 1)?;
    let mut tally = Tally::default();
    // Nothing should be in flight between rounds.
    while fleet.events.try_recv().is_ok() {
        tally.other += 1;
    }
    let cpu_before = cp.cpu_time()?;
    let t0 = Instant::now();
    staged.commit()?;
    let mut latency: Vec<Option<Duration>> = vec![None; n];
    let (mut applied, mut delta_bytes, mut delta_resources, mut version) = (0, 0, 0, 0);
    let deadline = t0 + plan.round_timeout;
    while applied < n {
        let Some(e) = next_event(fleet, cp, deadline).await? else {
            break;
        };
        if !record(
            &e,
            since_version,
            &staged.resource,
            &mut latency,
            &mut tally,
        ) {
            continue;
        }
        latency[e.subscriber] = Some(e.at - t0);
        applied += 1;
        delta_bytes = e.wire_bytes as u64;
        delta_resources = e.resources;
        version = e.version;
    }
    // Anything more that arrives now is a duplicate or an unrelated update.
    let settle = Instant::now() + SETTLE;
    while let Some(e) = next_event(fleet, cp, settle).await? {
        record(
            &e,
            since_version,
            &staged.resource,
            &mut latency,
            &mut tally,
        );
    }
    let cpu = cp.cpu_time()?.saturating_sub(cpu_before);
    let acked_at_server = if version > 0 {
        acked(admin, version, n).await?
    } else {
        0
    };

    let prefix = format!("round {number} ({})", staged.resource);
    if applied < n {
        failures.push(format!(
            "{prefix}: {} of {n} subscriber(s) did not apply the change within {:?}",
            n - applied,
            plan.round_timeout
        ));
    }
    for (count, what) in [
        (
            tally.snapshots,
            "got the change as a snapshot instead of a delta",
        ),
        (
            tally.wrong_shape,
            "got a delta that was not exactly the one changed policy",
        ),
        (tally.duplicates, "got the change twice"),
        (tally.other, "got an update that was not the change"),
    ] {
        if count > 0 {
            failures.push(format!("{prefix}: {count} update(s) {what}"));
        }
    }
    if version > 0 && acked_at_server < n {
        failures.push(format!(
            "{prefix}: the control plane saw {acked_at_server} of {n} ACKs of version {version} \
             after {ACK_WAIT:?}"
        ));
    }
    let times: Vec<Duration> = latency.into_iter().flatten().collect();
    Ok(Round {
        round: number,
        resource: staged.resource,
        version,
        applied,
        acked_at_server,
        latency: Percentiles::of(&times),
        delta_bytes,
        delta_resources,
        delta_to_snapshot: if snapshot_bytes > 0 {
            delta_bytes as f64 / snapshot_bytes as f64
        } else {
            0.0
        },
        cpu_s: cpu.as_secs_f64(),
    })
}

/// Classifies one event of a round; true if it is a subscriber's first, well-formed copy
/// of the change (the caller records its time).
fn record(
    e: &Event,
    since_version: u64,
    resource: &str,
    latency: &mut [Option<Duration>],
    tally: &mut Tally,
) -> bool {
    if e.resource_type != ResourceType::Policy || e.version <= since_version {
        tally.other += 1;
        return false;
    }
    if latency.get(e.subscriber).is_some_and(Option::is_some) {
        tally.duplicates += 1;
        return false;
    }
    if e.snapshot {
        // Still the change, timed like one, but it failed the "deltas carry small changes"
        // requirement.
        tally.snapshots += 1;
    } else if e.resources != 1
        || e.removed != 0
        || e.names.first().map(String::as_str) != Some(resource)
    {
        tally.wrong_shape += 1;
    }
    true
}

/// How many agents the control plane has seen ACK Policy `version`, waiting up to
/// [`ACK_WAIT`] for all `n` (an ACK is sent right after the apply we timed, but travels).
async fn acked(
    admin: &mut DiscoveryClient<Channel>,
    version: u64,
    n: usize,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + ACK_WAIT;
    loop {
        let status = admin
            .status(pb::StatusRequest {})
            .await
            .context("asking the control plane for its status")?
            .into_inner();
        let count = status
            .clients
            .iter()
            .filter(|c| {
                c.types.iter().any(|t| {
                    t.resource_type() == ResourceType::Policy && t.last_acked_version >= version
                })
            })
            .count();
        if count >= n || Instant::now() >= deadline {
            return Ok(count);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The total of `resyncs` the control plane reports (a subscriber that fell behind).
pub async fn resyncs(admin: &mut DiscoveryClient<Channel>) -> anyhow::Result<u64> {
    let status = admin
        .status(pb::StatusRequest {})
        .await
        .context("asking the control plane for its status")?
        .into_inner();
    Ok(status.clients.iter().map(|c| c.resyncs).sum())
}
