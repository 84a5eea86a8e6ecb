use std::{collections::HashMap, sync::Arc};

use super::*;
use crate::workload::{Workload, WorkloadUid};

fn endpoint(n: u8, weight: u32) -> Endpoint {
    Endpoint {
        workload: Arc::new(Workload {
            uid: WorkloadUid(format!("w{n}")),
            name: format!("w{n}"),
            weight,
            ..Workload::default()
        }),
        addr: SocketAddr::from(([10, 0, 0, n], 8080)),
    }
}

/// A fixed sequence of random numbers, repeated.
fn seq(values: &[u64]) -> impl Random + '_ {
    let mut i = 0;
    move || {
        let v = values[i % values.len()];
        i += 1;
        v
    }
}

fn rng() -> SplitMix {
    SplitMix::new(42)
}

/// How many of `n` sequential connections (each closed before the next) each endpoint gets.
fn spread(lb: &Balancer, endpoints: &[Endpoint], n: u32, now: Instant) -> HashMap<u8, u32> {
    let random = rng();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (e, _active) = lb.pick(endpoints, &[], now, &random).unwrap();
        *counts
            .entry(e.addr.ip().to_string().as_bytes()[7] - b'0')
            .or_default() += 1;
    }
    counts
}

#[test]
fn idle_endpoints_share_connections_in_proportion_to_their_weight() {
    let lb = Balancer::new();
    let endpoints = [endpoint(1, 1), endpoint(2, 2), endpoint(3, 1)];
    let n = 40_000;
    let counts = spread(&lb, &endpoints, n, Instant::now());
    // Expected shares 1/4, 1/2, 1/4; a binomial's standard deviation is sqrt(n p (1-p)),
    // and 5 of them is a bound a correct spread misses once in millions of runs.
    for (id, share) in [(1u8, 0.25), (2, 0.5), (3, 0.25)] {
        let expected = f64::from(n) * share;
        let sigma = (expected * (1.0 - share)).sqrt();
        let got = f64::from(counts[&id]);
        assert!(
            (got - expected).abs() < 5.0 * sigma,
            "endpoint {id}: {got} of {n}, expected {expected} +- {}",
            5.0 * sigma
        );
    }
    assert_eq!(lb.active(endpoints[1].addr), 0, "every guard was dropped");
}

#[test]
fn of_two_candidates_the_less_loaded_per_weight_wins() {
    let lb = Balancer::new();
    let endpoints = [endpoint(1, 1), endpoint(2, 1)];
    let now = Instant::now();
    // Draw 0 picks w1 first; w2 is then the only other candidate.
    let (first, held) = lb.pick(&endpoints, &[], now, seq(&[0, 0])).unwrap();
    assert_eq!(
        first.addr, endpoints[0].addr,
        "a tie goes to the first drawn"
    );
    // w1 holds a connection: the same draws now prefer w2, again and again.
    let mut held_too = Vec::new();
    let (second, guard) = lb.pick(&endpoints, &[], now, seq(&[0, 0])).unwrap();
    assert_eq!(second.addr, endpoints[1].addr);
    held_too.push(guard);
    // 1 each: a tie again, so the first drawn.
    let (third, guard) = lb.pick(&endpoints, &[], now, seq(&[0, 0])).unwrap();
    assert_eq!(third.addr, endpoints[0].addr);
    held_too.push(guard);
    assert_eq!(lb.active(endpoints[0].addr), 2);

    // Weights: w2 weighs 3, so 2 active on it is less load than 1 on w1.
    let weighted = [endpoint(1, 1), endpoint(2, 3)];
    let lb = Balancer::new();
    let _a = lb.pick(&weighted, &[], now, seq(&[0, 0])).unwrap();
    assert_eq!(_a.0.addr, weighted[0].addr);
    let _b = lb.pick(&weighted, &[], now, seq(&[1, 0])).unwrap();
    let _c = lb.pick(&weighted, &[], now, seq(&[1, 0])).unwrap();
    assert_eq!((_b.0.addr, _c.0.addr), (weighted[1].addr, weighted[1].addr));
    // w1 drawn first: 1/1 against 2/3, w2 wins.
    let (d, _d) = lb.pick(&weighted, &[], now, seq(&[0, 0])).unwrap();
    assert_eq!(d.addr, weighted[1].addr);
    drop((held, held_too));
}

#[test]
fn a_single_endpoint_is_picked_and_tried_ones_are_skipped() {
    let lb = Balancer::new();
    let one = [endpoint(1, 1)];
    let now = Instant::now();
    assert_eq!(lb.pick(&one, &[], now, &rng()).unwrap().0.addr, one[0].addr);
    assert!(lb.pick(&one, &[one[0].addr], now, &rng()).is_none());
    let three = [endpoint(1, 1), endpoint(2, 1), endpoint(3, 1)];
    let tried = [three[0].addr, three[2].addr];
    for _ in 0..20 {
        assert_eq!(
            lb.pick(&three, &tried, now, &rng()).unwrap().0.addr,
            three[1].addr
        );
    }
}

#[test]
fn three_failures_eject_and_the_back_off_doubles_until_a_success() {
    let lb = Balancer::new();
    let endpoints = [endpoint(1, 1), endpoint(2, 1)];
    let bad = endpoints[0].addr;
    let t0 = Instant::now();
    assert_eq!(lb.failure(bad, t0), FailureOutcome::Counted);
    assert_eq!(lb.failure(bad, t0), FailureOutcome::Counted);
    assert_eq!(
        lb.failure(bad, t0),
        FailureOutcome::Ejected(Duration::from_secs(1))
    );
    assert!(lb.is_ejected(bad, t0));
    // While ejected, it is never picked, and failures of older connections change nothing.
    for _ in 0..50 {
        assert_eq!(
            lb.pick(&endpoints, &[], t0, &rng()).unwrap().0.addr,
            endpoints[1].addr
        );
    }
    assert_eq!(lb.failure(bad, t0), FailureOutcome::Counted);

    // After a second: probation, one connection at a time.
    let t1 = t0 + Duration::from_secs(1);
    assert!(!lb.is_ejected(bad, t1));
    let (probe, guard) = lb.pick(&endpoints, &[], t1, seq(&[0, 0])).unwrap();
    assert_eq!(probe.addr, bad, "picked again once the ejection is over");
    for _ in 0..50 {
        let (e, _g) = lb.pick(&endpoints, &[], t1, &rng()).unwrap();
        assert_eq!(
            e.addr, endpoints[1].addr,
            "only one connection on probation"
        );
    }
    // The probe fails: ejected at once, for twice as long.
    assert_eq!(
        lb.failure(bad, t1),
        FailureOutcome::Ejected(Duration::from_secs(2))
    );
    drop(guard);
    assert!(lb.is_ejected(bad, t1 + Duration::from_millis(1999)));
    assert!(!lb.is_ejected(bad, t1 + Duration::from_secs(2)));
    // Doubling stops at the maximum.
    let mut t = t1 + Duration::from_secs(2);
    let mut last = Duration::ZERO;
    for _ in 0..10 {
        if let FailureOutcome::Ejected(d) = lb.failure(bad, t) {
            last = d;
            t += d;
        }
    }
    assert_eq!(last, EJECTION_MAX);

    // A successful probe restores it, and the next ejection starts from 1 s again.
    lb.success(bad);
    assert!(!lb.is_ejected(bad, t));
    assert_eq!(lb.failure(bad, t), FailureOutcome::Counted);
    lb.success(bad);
    assert_eq!(
        lb.failure(bad, t),
        FailureOutcome::Counted,
        "a success resets the count"
    );
    assert_eq!(lb.failure(bad, t), FailureOutcome::Counted);
    assert_eq!(
        lb.failure(bad, t),
        FailureOutcome::Ejected(Duration::from_secs(1))
    );
}

#[test]
fn with_every_endpoint_ejected_the_pick_is_among_them_anyway() {
    let lb = Balancer::new();
    let endpoints = [endpoint(1, 1), endpoint(2, 1), endpoint(3, 1)];
    let now = Instant::now();
    for e in &endpoints {
        for _ in 0..EJECT_AFTER_FAILURES {
            lb.failure(e.addr, now);
        }
        assert!(lb.is_ejected(e.addr, now));
    }
    let counts = spread(&lb, &endpoints, 300, now);
    assert_eq!(counts.len(), 3, "panic mode spreads over all: {counts:?}");
    // One healthy endpoint left: it takes everything.
    let lb = Balancer::new();
    for e in &endpoints[..2] {
        for _ in 0..EJECT_AFTER_FAILURES {
            lb.failure(e.addr, now);
        }
    }
    assert_eq!(spread(&lb, &endpoints, 100, now)[&3], 100);
    // Panic among the untried only: with the healthy one tried, the ejected are next.
    let (e, _) = lb
        .pick(&endpoints, &[endpoints[2].addr], now, &rng())
        .unwrap();
    assert_ne!(e.addr, endpoints[2].addr);
}

#[test]
fn state_of_endpoints_gone_from_every_service_is_dropped() {
    let lb = Balancer::new();
    let endpoints = [endpoint(1, 1), endpoint(2, 1)];
    let now = Instant::now();
    let held = lb.pick(&endpoints, &[], now, seq(&[0, 0])).unwrap();
    assert_eq!(held.0.addr, endpoints[0].addr);
    lb.failure(endpoints[1].addr, now);
    assert_eq!(lb.len(), 2);
    let keep = held.0.addr;
    lb.retain(|addr| addr == keep);
    assert_eq!(lb.len(), 1);
    lb.retain(|_| false);
    assert!(lb.is_empty());
    // A connection whose state was dropped still ends cleanly.
    drop(held);
}
