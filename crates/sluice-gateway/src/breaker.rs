//! A circuit breaker per backend: `failures` consecutive failed attempts open it; while open
//! no request goes there; after `cooldown` one probe is let through (half-open); the probe's
//! success closes the circuit, its failure opens it for another cooldown.
//!
//! Invariants: at most one probe is in flight while half-open; a success always resets the
//! failure count. Pure and synchronous (time is passed in), so tests drive it directly.

use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; counts consecutive failures.
    Closed {
        /// Failures since the last success.
        failures: u32,
    },
    /// No requests until `until`.
    Open {
        /// End of the cooldown.
        until: Instant,
    },
    /// One probe may pass; `probing` while it is in flight.
    HalfOpen {
        /// A probe is in flight.
        probing: bool,
    },
}

/// One backend's circuit breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
}

/// What an admitted attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A normal attempt through a closed circuit.
    Normal,
    /// The half-open probe.
    Probe,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        Self { cfg, state: BreakerState::Closed { failures: 0 } }
    }

    /// The current state (an elapsed cooldown reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open { until } if now >= until => BreakerState::HalfOpen { probing: false },
            s => s,
        }
    }

    /// Whether an attempt could be admitted now (without admitting it).
    pub fn would_admit(&self, now: Instant) -> bool {
        !matches!(self.state(now), BreakerState::Open { .. } | BreakerState::HalfOpen { probing: true })
    }

    /// Admits an attempt, or refuses while open or while the probe is out.
    pub fn admit(&mut self, now: Instant) -> Option<Admission> {
        match self.state(now) {
            BreakerState::Closed { .. } => Some(Admission::Normal),
            BreakerState::HalfOpen { probing: false } => {
                self.state = BreakerState::HalfOpen { probing: true };
                Some(Admission::Probe)
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { probing: true } => None,
        }
    }

    /// Records a successful attempt.
    pub fn success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// Records a failed attempt; returns true when this opened the circuit.
    pub fn failure(&mut self, now: Instant, admission: Admission) -> bool {
        match (self.state, admission) {
            (BreakerState::HalfOpen { .. }, Admission::Probe) => {
                self.state = BreakerState::Open { until: now + self.cfg.cooldown };
                true
            }
            (BreakerState::Closed { failures }, _) => {
                let failures = failures + 1;
                if failures >= self.cfg.failures {
                    self.state = BreakerState::Open { until: now + self.cfg.cooldown };
                    true
                } else {
                    self.state = BreakerState::Closed { failures };
                    false
                }
            }
            // A normal attempt admitted before the circuit opened: already open, keep the cooldown.
            _ => false,
        }
    }

    /// Forgets an admitted attempt that neither succeeded nor failed (the client went away):
    /// a probe slot is given back.
    pub fn abandon(&mut self, admission: Admission) {
        if admission == Admission::Probe && self.state == (BreakerState::HalfOpen { probing: true }) {
            self.state = BreakerState::HalfOpen { probing: false };
        }
    }

    /// The cooldown.
    pub fn cooldown(&self) -> Duration {
        self.cfg.cooldown
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig { failures: 3, cooldown: Duration::from_secs(10) })
    }

    #[test]
    fn consecutive_failures_open_and_a_probe_closes() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..2 {
            let a = b.admit(t0).unwrap();
            assert!(!b.failure(t0, a));
        }
        let a = b.admit(t0).unwrap();
        assert!(b.failure(t0, a), "third consecutive failure opens");
        assert_eq!(b.admit(t0 + Duration::from_secs(9)), None);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(later), Some(Admission::Probe));
        assert_eq!(b.admit(later), None, "one probe at a time");
        b.success();
        assert_eq!(b.state(later), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn a_success_resets_the_count_and_a_failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..2 {
            let a = b.admit(t0).unwrap();
            b.failure(t0, a);
        }
        b.success();
        let a = b.admit(t0).unwrap();
        assert!(!b.failure(t0, a), "count restarted after the success");
        for _ in 0..2 {
            let a = b.admit(t0).unwrap();
            b.failure(t0, a);
        }
        let t1 = t0 + Duration::from_secs(10);
        let probe = b.admit(t1).unwrap();
        assert!(b.failure(t1, probe));
        assert!(matches!(b.state(t1), BreakerState::Open { until } if until == t1 + Duration::from_secs(10)));
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig { failures: 1, cooldown: Duration::from_millis(1) });
        let a = b.admit(t0).unwrap();
        b.failure(t0, a);
        let t1 = t0 + Duration::from_millis(1);
        let probe = b.admit(t1).unwrap();
        b.abandon(probe);
        assert_eq!(b.admit(t1), Some(Admission::Probe));
    }
}
