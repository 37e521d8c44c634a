//! Load-balancing selectors. Each returns the candidates *in order*: the first is the choice, the
//! rest are the failover sequence.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Endpoint;

/// Orders instances for one call.
pub trait Selector: Send + Sync {
    /// The order in which to try `endpoints`, as indices into it (ordering copies no instance).
    fn order(&self, endpoints: &[&dyn Endpoint]) -> Vec<usize>;

    /// A call to `endpoint` starts ([`crate::Failover::call`] reports its calls).
    fn started(&self, endpoint: &dyn Endpoint) {
        let _ = endpoint;
    }

    /// A call to `endpoint` ended, however it ended.
    fn finished(&self, endpoint: &dyn Endpoint) {
        let _ = endpoint;
    }
}

/// Rotates through the instances.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Selector for RoundRobin {
    fn order(&self, endpoints: &[&dyn Endpoint]) -> Vec<usize> {
        if endpoints.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        (start..endpoints.len()).chain(0..start).collect()
    }
}

/// A uniformly random order.
#[derive(Debug, Default)]
pub struct Random;

impl Selector for Random {
    fn order(&self, endpoints: &[&dyn Endpoint]) -> Vec<usize> {
        use rand::seq::SliceRandom;
        let mut order: Vec<usize> = (0..endpoints.len()).collect();
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
    fn order(&self, endpoints: &[&dyn Endpoint]) -> Vec<usize> {
        if endpoints.is_empty() {
            return Vec::new();
        }
        let weight = |e: &dyn Endpoint| i64::from(e.weight().unwrap_or(1));
        let total: i64 = endpoints.iter().map(|e| weight(*e)).sum();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.retain(|id, _| endpoints.iter().any(|e| e.id() == id));
        for endpoint in endpoints {
            *current.entry(endpoint.id().to_owned()).or_insert(0) += weight(*endpoint);
        }
        let mut order: Vec<usize> = (0..endpoints.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(current.get(endpoints[i].id()).copied().unwrap_or(0)));
        if let Some(&best) = order.first() {
            *current.entry(endpoints[best].id().to_owned()).or_insert(0) -= total;
        }
        order
    }
}

/// Fewest requests in flight first. [`crate::Failover::call`] reports its calls; other callers
/// report with [`LeastOutstanding::start`].
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
    /// Marks a request to `endpoint` as started; it ends when the guard drops.
    pub fn start(&self, endpoint: &dyn Endpoint) -> InFlight<'_> {
        self.started(endpoint);
        InFlight { owner: self, id: endpoint.id().to_owned() }
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
    fn order(&self, endpoints: &[&dyn Endpoint]) -> Vec<usize> {
        let in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mut order: Vec<usize> = (0..endpoints.len()).collect();
        order.sort_by_key(|&i| in_flight.get(endpoints[i].id()).copied().unwrap_or(0));
        order
    }

    fn started(&self, endpoint: &dyn Endpoint) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match in_flight.get_mut(endpoint.id()) {
            Some(n) => *n += 1,
            None => {
                in_flight.insert(endpoint.id().to_owned(), 1);
            }
        }
    }

    fn finished(&self, endpoint: &dyn Endpoint) {
        self.end(endpoint.id());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instance as tests need it.
    struct Node {
        id: String,
        weight: Option<u32>,
    }

    impl Endpoint for Node {
        fn id(&self) -> &str {
            &self.id
        }
        fn service(&self) -> &str {
            "s"
        }
        fn weight(&self) -> Option<u32> {
            self.weight
        }
        fn is_up(&self) -> bool {
            true
        }
    }

    fn instance(id: &str, weight: Option<u32>) -> Node {
        Node { id: id.into(), weight }
    }

    /// The ids in the order `selector` gives for `all`.
    fn order<'a>(selector: &dyn Selector, all: &'a [Node]) -> Vec<&'a str> {
        let endpoints: Vec<&dyn Endpoint> = all.iter().map(|n| n as &dyn Endpoint).collect();
        selector.order(&endpoints).into_iter().map(|i| all[i].id.as_str()).collect()
    }

    #[test]
    fn round_robin_rotates_and_lists_the_rest_for_failover() {
        let all = [instance("a", None), instance("b", None), instance("c", None)];
        let rr = RoundRobin::default();
        assert_eq!(order(&rr, &all), ["a", "b", "c"]);
        assert_eq!(order(&rr, &all), ["b", "c", "a"]);
        assert_eq!(order(&rr, &all), ["c", "a", "b"]);
        assert!(rr.order(&[]).is_empty());
    }

    #[test]
    fn random_is_a_permutation() {
        let all = [instance("a", None), instance("b", None), instance("c", None)];
        let mut ids = order(&Random, &all);
        ids.sort_unstable();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn smooth_weighted_follows_weights_and_spreads() {
        let all = [instance("a", Some(5)), instance("b", Some(1)), instance("c", Some(1))];
        let sw = SmoothWeighted::default();
        let picks: Vec<&str> = (0..7).map(|_| order(&sw, &all)[0]).collect();
        // nginx's sequence for 5/1/1: a a b a c a a.
        assert_eq!(picks, ["a", "a", "b", "a", "c", "a", "a"]);
        let mut counts = HashMap::new();
        for _ in 0..700 {
            *counts.entry(order(&sw, &all)[0]).or_insert(0) += 1;
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
            let all: Vec<Node> =
                weights.iter().enumerate().map(|(n, w)| instance(&format!("i{n}"), Some(*w))).collect();
            let sw = SmoothWeighted::default();
            let total: u32 = weights.iter().sum();
            let mut counts: HashMap<String, u32> = HashMap::new();
            for _ in 0..total * cycles {
                let ids = order(&sw, &all);
                let mut seen = ids.clone();
                seen.sort_unstable();
                seen.dedup();
                proptest::prop_assert_eq!(seen.len(), all.len());
                *counts.entry(ids[0].to_owned()).or_insert(0) += 1;
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
        assert_eq!(order(&lo, &all), ["b", "a"]);
        drop(busy);
        let _b = lo.start(&all[1]);
        assert_eq!(order(&lo, &all), ["a", "b"]);
    }
}
