//! Routing policies: each orders the targets a request may use, most preferred first. The
//! router has already dropped targets that cannot take the request (window too small, circuit
//! open, unhealthy, at capacity), and tries the rest in the order given, then the fallbacks.
//! One file per policy; [`build`] is the registry.

mod cheapest;
mod ewma_latency;
mod least_outstanding;
mod prefix_affinity;
mod round_robin;
mod weighted;

use std::fmt::Debug;
use std::sync::Arc;

use crate::target::Target;

/// What a policy may know about a request.
#[derive(Debug, Clone)]
pub struct RouteRequest {
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// Tokens the request may generate (as asked, or 0 when unbounded).
    pub max_tokens: u64,
    /// Hash of the prompt's first bytes (prefix affinity).
    pub prefix_hash: u64,
}

/// A routing policy.
pub trait Policy: Send + Sync + Debug {
    /// Orders `eligible` (indexes into `targets`), most preferred first.
    fn rank(&self, req: &RouteRequest, targets: &[Arc<Target>], eligible: &[usize]) -> Vec<usize>;
}

/// The policies a route may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Each target in turn.
    RoundRobin,
    /// Fewest requests in flight.
    LeastOutstanding,
    /// Lowest latency moving average, weighed by load.
    EwmaLatency,
    /// In proportion to configured weights.
    Weighted,
    /// Lowest marginal price among targets whose window fits.
    Cheapest,
    /// Same prompt prefix → same engine (rendezvous hashing), balanced against load.
    PrefixAffinity,
}

impl PolicyKind {
    /// Names accepted in configuration files.
    pub const NAMES: [&str; 6] =
        ["round_robin", "least_outstanding", "ewma_latency", "weighted", "cheapest", "prefix_affinity"];

    /// Parses a configuration name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "round_robin" => Self::RoundRobin,
            "least_outstanding" => Self::LeastOutstanding,
            "ewma_latency" => Self::EwmaLatency,
            "weighted" => Self::Weighted,
            "cheapest" => Self::Cheapest,
            "prefix_affinity" => Self::PrefixAffinity,
            _ => return None,
        })
    }

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastOutstanding => "least_outstanding",
            Self::EwmaLatency => "ewma_latency",
            Self::Weighted => "weighted",
            Self::Cheapest => "cheapest",
            Self::PrefixAffinity => "prefix_affinity",
        }
    }
}

/// A policy instance for one route; `weights` follow the route's targets.
pub fn build(kind: PolicyKind, weights: &[u32]) -> Box<dyn Policy> {
    match kind {
        PolicyKind::RoundRobin => Box::new(round_robin::RoundRobin::default()),
        PolicyKind::LeastOutstanding => Box::new(least_outstanding::LeastOutstanding::default()),
        PolicyKind::EwmaLatency => Box::new(ewma_latency::EwmaLatency),
        PolicyKind::Weighted => Box::new(weighted::Weighted::new(weights)),
        PolicyKind::Cheapest => Box::new(cheapest::Cheapest),
        PolicyKind::PrefixAffinity => Box::new(prefix_affinity::PrefixAffinity),
    }
}

/// `eligible` rotated to start at `start` (ties broken fairly between equal targets).
fn rotated(eligible: &[usize], start: usize) -> Vec<usize> {
    let n = eligible.len();
    (0..n).map(|i| eligible[(start + i) % n.max(1)]).collect()
}

#[cfg(test)]
pub(crate) mod testing {
    //! Targets for policy tests: real `Target`s over a backend that is never called.
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use futures_util::FutureExt;
    use futures_util::future::BoxFuture;

    use crate::backend::{Backend, TransportError, UpstreamRequest, UpstreamResponse};
    use crate::config::{BackendConfig, BackendKind, Cost, Endpoint};
    use crate::target::Target;

    #[derive(Debug)]
    struct Unused;

    impl Backend for Unused {
        fn send(&self, _: UpstreamRequest) -> BoxFuture<'static, Result<UpstreamResponse, TransportError>> {
            async { Err(TransportError::Connect("unused".into())) }.boxed()
        }
        fn health(&self) -> BoxFuture<'static, Result<(), String>> {
            async { Ok(()) }.boxed()
        }
    }

    pub fn target(name: &str, cost: Cost, window: Option<u32>) -> Arc<Target> {
        let cfg = BackendConfig {
            name: name.into(),
            kind: BackendKind::Sluice,
            endpoint: Endpoint::Http { base_url: "http://127.0.0.1:1/v1".into(), api_key: None },
            model: name.into(),
            context_window: window,
            max_concurrent: 1000,
            cost,
            timeouts: Default::default(),
            breaker: Default::default(),
            health: Default::default(),
        };
        Arc::new(Target::new(cfg, Arc::new(Unused)))
    }

    pub fn targets(n: usize) -> Vec<Arc<Target>> {
        (0..n).map(|i| target(&format!("t{i}"), Cost::Unknown, None)).collect()
    }

    pub fn req(prefix_hash: u64) -> super::RouteRequest {
        super::RouteRequest { prompt_tokens: 10, max_tokens: 10, prefix_hash }
    }
}
