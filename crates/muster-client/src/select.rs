//! Load-balancing selectors. Each returns the candidates *in order*: the first is the choice, the
//! rest are the failover sequence.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use muster_api::v1::Instance;

/// Orders instances for one call.
pub trait Selector: Send + Sync {
    /// The instances in the order to try them (borrowed: ordering copies no instance).
    fn order<'a>(&self, instances: &'a [Instance]) -> Vec<&'a Instance>;

    /// A call to `instance` starts ([`crate::Client::call_with_failover`] reports its calls).
    fn started(&self, instance: &Instance) {
        let _ = instance;
    }

    /// A call to `instance` ended, however it ended.
    fn finished(&self, instance: &Instance) {
        let _ = instance;
    }
}

/// Rotates through the instances.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Selector for RoundRobin {
    fn order<'a>(&self, instances: &'a [Instance]) -> Vec<&'a Instance> {
        if instances.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % instances.len();
        instances[start..].iter().chain(&instances[..start]).collect()
    }
}

/// A uniformly random order.
#[derive(Debug, Default)]
pub struct Random;

impl Selector for Random {
    fn order<'a>(&self, instances: &'a [Instance]) -> Vec<&'a Instance> {
        use rand::seq::SliceRandom;
        let mut order: Vec<&Instance> = instances.iter().collect();
        order.shuffle(&mut rand::rng());
        order
    }
}

/// Smooth weighted round-robin (nginx's): over any window, instance `i` is chosen in proportion
/// to its weight (absent weights count as 1), spread out rather than in bursts.
#[derive(Debug, Default)]
pub struct SmoothWeighted {
    /// Current weight per instance id.
    current: Mutex<HashMap<String, i64>>,
}

impl Selector for SmoothWeighted {
    fn order<'a>(&self, instances: &'a [Instance]) -> Vec<&'a Instance> {
        if instances.is_empty() {
            return Vec::new();
        }
        let weight = |i: &Instance| i64::from(i.weight.unwrap_or(1));
        let total: i64 = instances.iter().map(weight).sum();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.retain(|id, _| instances.iter().any(|i| &i.id == id));
        for instance in instances {
            *current.entry(instance.id.clone()).or_insert(0) += weight(instance);
        }
        let mut order: Vec<&Instance> = instances.iter().collect();
        order.sort_by_key(|i| std::cmp::Reverse(current.get(&i.id).copied().unwrap_or(0)));
        if let Some(best) = order.first() {
            *current.entry(best.id.clone()).or_insert(0) -= total;
        }
        order
    }
}

/// Fewest requests in flight first. [`crate::Client::call_with_failover`] reports its calls; other
/// callers report with [`LeastOutstanding::start`].
#[derive(Debug, Default)]
pub struct LeastOutstanding {
    in_flight: Mutex<HashMap<String, usize>>,
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub struct InFlight<'a> {
    owner: &'a LeastOutstanding,
    id: String,
}

impl LeastOutstanding {
    /// Marks a request to `instance` as started; it ends when the guard drops.
    pub fn start(&self, instance: &Instance) -> InFlight<'_> {
        self.started(instance);
        InFlight { owner: self, id: instance.id.clone() }
    }

    fn end(&self, id: &str) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(id);
            }
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.owner.end(&self.id);
    }
}

impl Selector for LeastOutstanding {
    fn order<'a>(&self, instances: &'a [Instance]) -> Vec<&'a Instance> {
        let in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mut order: Vec<&Instance> = instances.iter().collect();
        order.sort_by_key(|i| in_flight.get(&i.id).copied().unwrap_or(0));
        order
    }

    fn started(&self, instance: &Instance) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match in_flight.get_mut(&instance.id) {
            Some(n) => *n += 1,
            None => {
                in_flight.insert(instance.id.clone(), 1);
            }
        }
    }

    fn finished(&self, instance: &Instance) {
        self.end(&instance.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::NodeStatus;

    fn instance(id: &str, weight: Option<u32>) -> Instance {
        Instance {
            id: id.into(),
            service: "s".into(),
            host: "h".into(),
            port: 1,
            url: "http://h:1".into(),
            health: "http://h:1/health".into(),
            version: None,
            status: NodeStatus::Up,
            metadata: Default::default(),
            weight,
            registered_at: 0,
            last_heartbeat: 0,
        }
    }

    fn ids<'a>(order: &[&'a Instance]) -> Vec<&'a str> {
        order.iter().map(|i| i.id.as_str()).collect()
    }

    #[test]
    fn round_robin_rotates_and_lists_the_rest_for_failover() {
        let all = [instance("a", None), instance("b", None), instance("c", None)];
        let rr = RoundRobin::default();
        assert_eq!(ids(&rr.order(&all)), ["a", "b", "c"]);
        assert_eq!(ids(&rr.order(&all)), ["b", "c", "a"]);
        assert_eq!(ids(&rr.order(&all)), ["c", "a", "b"]);
        assert!(rr.order(&[]).is_empty());
    }

    #[test]
    fn random_is_a_permutation() {
        let all = [instance("a", None), instance("b", None), instance("c", None)];
        let mut order = ids(&Random.order(&all)).into_iter().map(str::to_owned).collect::<Vec<_>>();
        order.sort();
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[test]
    fn smooth_weighted_follows_weights_and_spreads() {
        let all = [instance("a", Some(5)), instance("b", Some(1)), instance("c", Some(1))];
        let sw = SmoothWeighted::default();
        let picks: Vec<String> = (0..7).map(|_| sw.order(&all)[0].id.clone()).collect();
        // nginx's sequence for 5/1/1: a a b a c a a.
        assert_eq!(picks, ["a", "a", "b", "a", "c", "a", "a"]);
        let mut counts = HashMap::new();
        for _ in 0..700 {
            *counts.entry(sw.order(&all)[0].id.clone()).or_insert(0) += 1;
        }
        assert_eq!((counts["a"], counts["b"], counts["c"]), (500, 100, 100));
    }

    proptest::proptest! {
        /// Over whole cycles, smooth weighted picks every instance exactly in proportion to its
        /// weight, and every answer is a permutation (the failover sequence holds each once).
        #[test]
        fn smooth_weighted_distribution_matches_weights(
            weights in proptest::collection::vec(1u32..=20, 1..8),
            cycles in 1u32..4,
        ) {
            let all: Vec<Instance> =
                weights.iter().enumerate().map(|(n, w)| instance(&format!("i{n}"), Some(*w))).collect();
            let sw = SmoothWeighted::default();
            let total: u32 = weights.iter().sum();
            let mut counts: HashMap<String, u32> = HashMap::new();
            for _ in 0..total * cycles {
                let order = sw.order(&all);
                let mut seen = ids(&order);
                seen.sort_unstable();
                seen.dedup();
                proptest::prop_assert_eq!(seen.len(), all.len());
                *counts.entry(order[0].id.clone()).or_insert(0) += 1;
            }
            for (n, w) in weights.iter().enumerate() {
                proptest::prop_assert_eq!(counts.get(&format!("i{n}")).copied().unwrap_or(0), w * cycles);
            }
        }
    }

    #[test]
    fn least_outstanding_prefers_idle_instances() {
        let all = [instance("a", None), instance("b", None)];
        let lo = LeastOutstanding::default();
        let busy = lo.start(&all[0]);
        assert_eq!(ids(&lo.order(&all)), ["b", "a"]);
        drop(busy);
        let _b = lo.start(&all[1]);
        assert_eq!(ids(&lo.order(&all)), ["a", "b"]);
    }
}
