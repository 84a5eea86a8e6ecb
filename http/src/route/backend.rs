//! Weighted choice among a rule's backends.

use super::model::{Backend, Rule};

/// The backend a request goes to. `rand` is a uniform random number; a backend is chosen
/// with probability weight / sum of weights. Weight-0 backends are never chosen; `None`
/// when the rule has no backend with a weight, which Gateway API answers with 500.
pub fn pick(rule: &Rule, rand: u32) -> Option<&Backend> {
    pick_from(&rule.backends, rand)
}

/// `pick` over any list of backends.
pub fn pick_from(backends: &[Backend], rand: u32) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    // Scales rand to [0, total) without modulo bias worth speaking of (total << 2^32).
    let mut point = (u64::from(rand) * total) >> 32;
    for b in backends {
        let w = u64::from(b.weight);
        if point < w {
            return Some(b);
        }
        point -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::BackendKind;

    fn backend(name: &str, weight: u32) -> Backend {
        Backend {
            kind: BackendKind::Service {
                namespace: "ns".into(),
                name: name.into(),
                port: 80,
            },
            weight,
            filters: Vec::new(),
        }
    }

    fn name(b: Option<&Backend>) -> Option<&str> {
        match &b?.kind {
            BackendKind::Service { name, .. } => Some(name),
            BackendKind::Url { .. } => None,
        }
    }

    #[test]
    fn weights_split_the_random_range() {
        let bs = [backend("a", 90), backend("zero", 0), backend("b", 10)];
        let mut counts = [0u32; 2];
        // An even sweep over the u32 range: the split must be 90/10 exactly (within one
        // step).
        let steps = 1000u64;
        for i in 0..steps {
            let rand = u32::try_from(i * (u64::from(u32::MAX) + 1) / steps).unwrap();
            match name(pick_from(&bs, rand)) {
                Some("a") => counts[0] += 1,
                Some("b") => counts[1] += 1,
                other => panic!("picked {other:?}"),
            }
        }
        assert!(
            (899..=901).contains(&counts[0]) && counts[0] + counts[1] == 1000,
            "{counts:?}"
        );
        assert_eq!(name(pick_from(&bs, 0)), Some("a"));
        assert_eq!(name(pick_from(&bs, u32::MAX)), Some("b"));
    }

    #[test]
    fn all_zero_weights_pick_nothing() {
        assert!(pick_from(&[backend("a", 0), backend("b", 0)], 7).is_none());
        assert!(pick_from(&[], 7).is_none());
    }
}
