//! Continuous batching, as pure logic: which tokens of which sequences run in the next engine
//! step. Follows vLLM v1's scheduler: one token budget per step (`max_num_batched_tokens`),
//! running sequences first (decodes and unfinished prefills, oldest first), then waiting
//! sequences in arrival order (FCFS) with their prompts cut into chunks that fit the budget
//! (chunked prefill), so a long prompt never stalls everyone else's next token. While some
//! sequences are decoding, prompt tokens in a step are further capped
//! (`max_prefill_tokens_with_decodes`): on a CPU a 512-token chunk takes a quarter of a second,
//! a pause every decoding stream would see; idle, prompts still get the whole budget.
//!
//! Memory comes from the `sluice-kv` block pool. When a running sequence needs a block and none
//! is free, the most recently admitted running sequence is preempted: its blocks are released
//! and it goes back to the front of the waiting queue to be recomputed later (its prefix
//! cache entries often make that cheap). Nothing is ever refused for lack of memory once
//! admitted; admission itself is bounded by `max_waiting`.
//!
//! Invariants (checked by tests): a step schedules at most `max_num_batched_tokens` tokens and
//! `max_num_seqs` sequences; every scheduled sequence holds blocks for every position it
//! computes; a sequence is in exactly one of waiting / running, or gone.

use std::collections::VecDeque;

use sluice_kv::{KvManager, SeqId};

/// Scheduler limits.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Tokens per step (prefill chunks + decodes).
    pub max_num_batched_tokens: usize,
    /// Prompt tokens per step while any sequence is decoding (within the token budget).
    pub max_prefill_tokens_with_decodes: usize,
    /// Sequences per step.
    pub max_num_seqs: usize,
    /// Sequences that may wait; beyond it `add` fails.
    pub max_waiting: usize,
    /// KV blocks in the pool.
    pub num_blocks: usize,
    /// Positions per block.
    pub block_size: usize,
    /// Reuse cached prompt prefixes.
    pub prefix_caching: bool,
}

/// The waiting queue is full.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{waiting} requests are already waiting (limit {limit})")]
pub struct QueueFull {
    /// Sequences waiting.
    pub waiting: usize,
    /// The limit.
    pub limit: usize,
}

/// A sequence to schedule.
#[derive(Debug, Clone)]
pub struct NewSeq {
    /// Its identity.
    pub id: SeqId,
    /// Prompt tokens (non-empty).
    pub prompt: Vec<u32>,
    /// Prefix-cache namespace (chosen by the server).
    pub salt: Vec<u8>,
    /// Higher runs earlier once fairness policies exist; FCFS ignores it.
    pub priority: i32,
}

#[derive(Debug)]
struct Seq {
    id: SeqId,
    tokens: Vec<u32>,
    salt: Vec<u8>,
    #[expect(dead_code, reason = "kept for priority policies; FCFS does not read it")]
    priority: i32,
    /// Positions whose keys/values are computed.
    computed: usize,
    /// Whether it holds a block table (admitted and not preempted since).
    started: bool,
}

/// One sequence's share of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// The sequence.
    pub id: SeqId,
    /// First position computed in this step.
    pub start: usize,
    /// Tokens computed in this step.
    pub len: usize,
    /// Whether the step ends at its last known token, so a new token is sampled.
    pub sample: bool,
}

/// What the next engine step runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Work, running sequences first.
    pub scheduled: Vec<Scheduled>,
    /// Sequences preempted while planning (their blocks were released).
    pub preempted: Vec<SeqId>,
}

impl StepPlan {
    /// Tokens in the step.
    pub fn num_tokens(&self) -> usize {
        self.scheduled.iter().map(|s| s.len).sum()
    }
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Preemptions so far.
    pub preemptions: u64,
}

/// The scheduler state.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    kv: KvManager,
    waiting: VecDeque<Seq>,
    /// Admission order: the last one is the newest, preempted first.
    running: Vec<Seq>,
    stats: SchedulerStats,
}

impl Scheduler {
    /// An empty scheduler over a fresh block pool.
    pub fn new(cfg: SchedulerConfig) -> Self {
        let kv = KvManager::new(cfg.num_blocks, cfg.block_size, cfg.prefix_caching);
        Self { cfg, kv, waiting: VecDeque::new(), running: Vec::new(), stats: SchedulerStats::default() }
    }

    /// The block tables and pool.
    pub fn kv(&self) -> &KvManager {
        &self.kv
    }

    /// Counters.
    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    /// Sequences waiting.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences running.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Whether nothing is left to do.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Queues a sequence.
    pub fn add(&mut self, seq: NewSeq) -> Result<(), QueueFull> {
        if self.waiting.len() >= self.cfg.max_waiting {
            return Err(QueueFull { waiting: self.waiting.len(), limit: self.cfg.max_waiting });
        }
        self.waiting.push_back(Seq {
            id: seq.id,
            tokens: seq.prompt,
            salt: seq.salt,
            priority: seq.priority,
            computed: 0,
            started: false,
        });
        Ok(())
    }

    /// A sequence's tokens so far (prompt and generated).
    pub fn tokens(&self, id: SeqId) -> Option<&[u32]> {
        self.running.iter().chain(self.waiting.iter()).find(|s| s.id == id).map(|s| s.tokens.as_slice())
    }

    /// Removes a sequence (finished, cancelled, failed) and frees its blocks. Unknown ids are
    /// ignored.
    pub fn remove(&mut self, id: SeqId) {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i);
        } else if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i);
        }
        self.kv.release(id);
    }

    fn preempt_newest(&mut self, plan: &mut StepPlan) -> Option<SeqId> {
        let mut victim = self.running.pop()?;
        self.kv.release(victim.id);
        victim.computed = 0;
        victim.started = false;
        plan.scheduled.retain(|s| s.id != victim.id);
        plan.preempted.push(victim.id);
        self.stats.preemptions += 1;
        let id = victim.id;
        self.waiting.push_front(victim);
        Some(id)
    }

    /// Plans the next step.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        // Prompt tokens (every position but a decode's one) this step may still take.
        let decoding = self.running.iter().any(|s| s.tokens.len() == s.computed + 1);
        let mut prefill_budget = if decoding { self.cfg.max_prefill_tokens_with_decodes } else { usize::MAX };
        // Running sequences, oldest first.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let (id, computed, total) = {
                let s = &self.running[i];
                (s.id, s.computed, s.tokens.len())
            };
            let prefill = total - computed > 1;
            let len = (total - computed).min(if prefill { budget.min(prefill_budget) } else { budget });
            if len == 0 {
                i += 1;
                continue;
            }
            loop {
                if self.kv.grow(id, computed + len).is_ok() {
                    plan.scheduled.push(Scheduled { id, start: computed, len, sample: computed + len == total });
                    budget -= len;
                    if prefill {
                        prefill_budget -= len;
                    }
                    i += 1;
                    break;
                }
                match self.preempt_newest(&mut plan) {
                    Some(victim) if victim == id => break,
                    Some(_) => continue,
                    None => break,
                }
            }
        }
        // Waiting sequences, in order, while there is budget, room and memory.
        while budget > 0 && prefill_budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(mut s) = self.waiting.pop_front() else { break };
            if !s.started {
                s.computed = self.kv.start(s.id, &s.tokens, &s.salt);
                s.started = true;
            }
            let len = (s.tokens.len() - s.computed).min(budget).min(prefill_budget);
            if self.kv.grow(s.id, s.computed + len).is_err() {
                // No memory: undo (cached blocks go back) and wait for running work to finish.
                self.kv.release(s.id);
                s.started = false;
                s.computed = 0;
                self.waiting.push_front(s);
                break;
            }
            plan.scheduled.push(Scheduled { id: s.id, start: s.computed, len, sample: s.computed + len == s.tokens.len() });
            budget -= len;
            prefill_budget -= len;
            self.running.push(s);
        }
        plan
    }

    /// Records a finished step: the scheduled positions are computed, and sampled tokens are
    /// appended (`sampled` pairs a sequence with its new token).
    pub fn complete(&mut self, plan: &StepPlan, sampled: &[(SeqId, u32)]) {
        for item in &plan.scheduled {
            let Some(s) = self.running.iter_mut().find(|s| s.id == item.id) else { continue };
            s.computed = (item.start + item.len).max(s.computed);
            self.kv.commit(s.id, &s.tokens[..s.computed]);
        }
        for &(id, tok) in sampled {
            if let Some(s) = self.running.iter_mut().find(|s| s.id == id) {
                s.tokens.push(tok);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(blocks: usize, budget: usize) -> SchedulerConfig {
        SchedulerConfig {
            max_num_batched_tokens: budget,
            max_prefill_tokens_with_decodes: budget,
            max_num_seqs: 8,
            max_waiting: 16,
            num_blocks: blocks,
            block_size: 4,
            prefix_caching: true,
        }
    }

    fn seq(id: u64, len: usize) -> NewSeq {
        NewSeq { id: SeqId(id), prompt: (0..len as u32).map(|t| t + 100 * id as u32).collect(), salt: vec![], priority: 0 }
    }

    /// Runs plans to completion, sampling token 7 each time, until every sequence has `gen`
    /// generated tokens. Returns the plans.
    fn drive(s: &mut Scheduler, prompts: &[usize], generate: usize) -> Vec<StepPlan> {
        let mut plans = Vec::new();
        for _ in 0..1000 {
            if s.is_idle() {
                break;
            }
            let plan = s.schedule();
            let sampled: Vec<(SeqId, u32)> = plan.scheduled.iter().filter(|x| x.sample).map(|x| (x.id, 7)).collect();
            s.complete(&plan, &sampled);
            for (id, _) in &sampled {
                let prompt = prompts[id.0 as usize];
                if s.tokens(*id).map_or(0, |t| t.len()) >= prompt + generate {
                    s.remove(*id);
                }
            }
            plans.push(plan);
        }
        plans
    }

    #[test]
    fn decodes_first_then_chunked_prefill_under_the_budget() {
        let mut s = Scheduler::new(cfg(64, 8));
        s.add(seq(0, 3)).unwrap();
        let p = s.schedule();
        assert_eq!(p.scheduled, vec![Scheduled { id: SeqId(0), start: 0, len: 3, sample: true }]);
        s.complete(&p, &[(SeqId(0), 9)]);
        s.add(seq(1, 20)).unwrap();
        // Seq 0 decodes one token; seq 1's 20-token prompt gets the 7 left, then 7 more...
        let p = s.schedule();
        assert_eq!(p.scheduled[0], Scheduled { id: SeqId(0), start: 3, len: 1, sample: true });
        assert_eq!(p.scheduled[1], Scheduled { id: SeqId(1), start: 0, len: 7, sample: false });
        assert_eq!(p.num_tokens(), 8);
        s.complete(&p, &[(SeqId(0), 9)]);
        let p = s.schedule();
        assert_eq!(p.scheduled[1], Scheduled { id: SeqId(1), start: 7, len: 7, sample: false });
    }

    #[test]
    fn prompts_get_the_whole_budget_when_idle_and_the_cap_beside_decodes() {
        let mut c = cfg(64, 16);
        c.max_prefill_tokens_with_decodes = 4;
        let mut s = Scheduler::new(c);
        s.add(seq(0, 12)).unwrap();
        // Nothing is decoding: the whole prompt in one step.
        let p = s.schedule();
        assert_eq!(p.scheduled, vec![Scheduled { id: SeqId(0), start: 0, len: 12, sample: true }]);
        s.complete(&p, &[(SeqId(0), 9)]);
        // Seq 0 decodes: the next prompts share four positions per step, whoever owns them.
        s.add(seq(1, 6)).unwrap();
        s.add(seq(2, 3)).unwrap();
        let p = s.schedule();
        assert_eq!(p.scheduled[0], Scheduled { id: SeqId(0), start: 12, len: 1, sample: true });
        assert_eq!(p.scheduled[1], Scheduled { id: SeqId(1), start: 0, len: 4, sample: false });
        assert_eq!(p.scheduled.len(), 2);
        s.complete(&p, &[(SeqId(0), 9)]);
        let p = s.schedule();
        assert_eq!(p.scheduled[1], Scheduled { id: SeqId(1), start: 4, len: 2, sample: true });
        assert_eq!(p.scheduled[2], Scheduled { id: SeqId(2), start: 0, len: 2, sample: false });
        assert_eq!(p.num_tokens(), 5);
    }

    #[test]
    fn a_tiny_pool_preempts_the_newest_and_everything_still_finishes() {
        let prompts = [10, 10, 10, 10];
        let mut s = Scheduler::new(cfg(8, 64));
        for (i, _) in prompts.iter().enumerate() {
            s.add(seq(i as u64, prompts[i])).unwrap();
        }
        let plans = drive(&mut s, &prompts, 12);
        assert!(s.is_idle(), "did not finish");
        assert!(s.stats().preemptions > 0, "the pool was meant to be too small");
        assert!(plans.iter().all(|p| p.num_tokens() <= 64));
        assert_eq!(s.kv().pool().num_free(), 8);
    }

    #[test]
    fn full_queue_is_refused_and_removal_frees_blocks() {
        let mut c = cfg(16, 64);
        c.max_waiting = 1;
        let mut s = Scheduler::new(c);
        s.add(seq(0, 5)).unwrap();
        assert_eq!(s.add(seq(1, 5)), Err(QueueFull { waiting: 1, limit: 1 }));
        let p = s.schedule();
        s.complete(&p, &[]);
        assert!(s.kv().pool().num_free() < 16);
        s.remove(SeqId(0));
        assert_eq!(s.kv().pool().num_free(), 16);
        assert!(s.is_idle());
    }

    #[test]
    fn a_shared_prompt_prefix_is_not_recomputed() {
        let mut s = Scheduler::new(cfg(32, 64));
        let prompt: Vec<u32> = (0..13).collect();
        s.add(NewSeq { id: SeqId(0), prompt: prompt.clone(), salt: vec![1], priority: 0 }).unwrap();
        let p = s.schedule();
        s.complete(&p, &[(SeqId(0), 5)]);
        s.remove(SeqId(0));
        s.add(NewSeq { id: SeqId(1), prompt, salt: vec![1], priority: 0 }).unwrap();
        let p = s.schedule();
        assert_eq!(p.scheduled, vec![Scheduled { id: SeqId(1), start: 12, len: 1, sample: true }]);
    }
}
