//! Where a forward pass spends its time, by phase, for benchmarks and profiling
//! (`sluice bench-model --phases`). Off by default: an enabled pass reads the clock about ten
//! times per layer; a disabled one only takes the model's (uncontended) timing lock once.

use std::time::{Duration, Instant};

/// A part of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Query, key and value projections.
    Qkv,
    /// Rotary embedding, KV cache stores and attention itself (and any q/k bias and norms).
    Attention,
    /// Attention output projection.
    OutProj,
    /// Feed-forward gate and up projections.
    FfnUp,
    /// Feed-forward down projection.
    FfnDown,
    /// Output head (logits).
    Head,
    /// Everything else: norms, residual adds, the gated activation, embedding lookup.
    Other,
}

impl Phase {
    /// Every phase, in pass order.
    pub const ALL: [Phase; 7] = [Phase::Qkv, Phase::Attention, Phase::OutProj, Phase::FfnUp, Phase::FfnDown, Phase::Head, Phase::Other];

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Qkv => "qkv",
            Phase::Attention => "attention",
            Phase::OutProj => "out_proj",
            Phase::FfnUp => "ffn_up",
            Phase::FfnDown => "ffn_down",
            Phase::Head => "head",
            Phase::Other => "other",
        }
    }
}

/// Time per phase summed over passes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimes {
    /// Forward passes counted.
    pub passes: u64,
    /// Tokens those passes ran.
    pub tokens: u64,
    spent: [Duration; 7],
}

impl PhaseTimes {
    /// Time spent in `phase`.
    pub fn get(&self, phase: Phase) -> Duration {
        self.spent[phase as usize]
    }

    /// Time spent in all phases.
    pub fn total(&self) -> Duration {
        self.spent.iter().sum()
    }

    pub(crate) fn add(&mut self, other: &PhaseTimes) {
        self.passes += other.passes;
        self.tokens += other.tokens;
        for (a, b) in self.spent.iter_mut().zip(other.spent) {
            *a += b;
        }
    }
}

/// One pass's stopwatch: each [`Laps::lap`] charges the time since the previous one to a phase.
pub(crate) struct Laps {
    last: Instant,
    times: PhaseTimes,
}

impl Laps {
    pub(crate) fn start(tokens: usize) -> Self {
        Self { last: Instant::now(), times: PhaseTimes { passes: 1, tokens: tokens as u64, ..Default::default() } }
    }

    pub(crate) fn lap(&mut self, phase: Phase) {
        let now = Instant::now();
        self.times.spent[phase as usize] += now - self.last;
        self.last = now;
    }

    pub(crate) fn finish(mut self) -> PhaseTimes {
        self.lap(Phase::Other);
        self.times
    }
}

/// [`Laps::lap`] when timing is on.
pub(crate) fn lap(laps: &mut Option<Laps>, phase: Phase) {
    if let Some(l) = laps {
        l.lap(phase);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_charge_each_interval_to_one_phase_and_sum_to_the_pass() {
        let t0 = Instant::now();
        let mut laps = Laps::start(16);
        std::thread::sleep(Duration::from_millis(3));
        laps.lap(Phase::Qkv);
        std::thread::sleep(Duration::from_millis(2));
        laps.lap(Phase::Head);
        let t = laps.finish();
        let wall = t0.elapsed();
        assert!(t.get(Phase::Qkv) >= Duration::from_millis(3));
        assert!(t.get(Phase::Head) >= Duration::from_millis(2));
        assert!(t.total() <= wall, "{:?} > {wall:?}", t.total());
        assert_eq!((t.passes, t.tokens), (1, 16));
        let mut sum = PhaseTimes::default();
        sum.add(&t);
        sum.add(&t);
        assert_eq!((sum.passes, sum.tokens, sum.get(Phase::Qkv)), (2, 32, 2 * t.get(Phase::Qkv)));
    }
}
