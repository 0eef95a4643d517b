//! The engine thread: continuous batching. Every step it takes in new requests, drops the
//! cancelled ones (freeing their blocks), asks the scheduler which tokens of which sequences
//! to run, runs them as one batched forward pass over the paged KV memory, samples each
//! sequence that reached its last known token, and streams the results.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};

use sluice_kv::SeqId;
use sluice_model::{BatchSeq, LoadedModel, Logits, PagedKv};
use sluice_scheduler::{NewSeq, Scheduler, SchedulerConfig, StepPlan};

use crate::engine::{EngineConfig, EngineStats, FinishReason, Job, StoppedOnDrop};
use crate::error::EngineError;
use crate::sequence::SeqRuntime;

pub(crate) struct Worker {
    model: Arc<LoadedModel>,
    stats: Arc<EngineStats>,
    sched_cfg: SchedulerConfig,
    scheduler: Scheduler,
    kv: PagedKv,
    seqs: HashMap<SeqId, SeqRuntime>,
    next_id: u64,
    /// The last step's logits (kept: a step's are megabytes).
    logits: Vec<f32>,
}

impl Worker {
    pub(crate) fn new(model: Arc<LoadedModel>, cfg: EngineConfig, num_blocks: usize, stats: Arc<EngineStats>) -> Self {
        let sched_cfg = SchedulerConfig {
            max_num_batched_tokens: cfg.max_num_batched_tokens.max(1),
            max_prefill_tokens_with_decodes: cfg.max_prefill_tokens_with_decodes.max(1),
            max_num_seqs: cfg.max_num_seqs.max(1),
            // The waiting bound is enforced at submit time.
            max_waiting: usize::MAX,
            num_blocks,
            block_size: cfg.block_size.max(1),
            prefix_caching: cfg.prefix_caching,
        };
        let kv = PagedKv::with_dtype(&model.model.cfg, num_blocks, sched_cfg.block_size, cfg.kv_cache_dtype);
        Self {
            model,
            stats,
            scheduler: Scheduler::new(sched_cfg.clone()),
            sched_cfg,
            kv,
            seqs: HashMap::new(),
            next_id: 0,
            logits: Vec::new(),
        }
    }

    pub(crate) fn run(mut self, rx: Receiver<Job>) {
        let _guard = StoppedOnDrop(self.stats.clone());
        loop {
            if self.seqs.is_empty() {
                match rx.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if self.seqs.is_empty() => return,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            self.reap_cancelled();
            if self.seqs.is_empty() {
                continue;
            }
            if std::panic::catch_unwind(AssertUnwindSafe(|| self.step())).is_err() {
                self.fail_all(EngineError::Model("internal engine error".into()));
                // Even logging may be what failed: the engine thread must survive it.
                let _ = std::panic::catch_unwind(|| tracing::error!("engine: a step panicked; the engine keeps serving"));
            }
        }
    }

    fn admit(&mut self, job: Job) {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        let (rt, req) = SeqRuntime::new(job, self.stats.clone());
        let new = NewSeq { id, prompt: req.prompt, salt: req.cache_salt, priority: 0 };
        if self.scheduler.add(new).is_ok() {
            self.seqs.insert(id, rt);
        }
    }

    fn release_waiting_slot(&self, rt: &SeqRuntime) {
        if rt.first_scheduled.is_none() {
            self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn end(&mut self, id: SeqId) {
        self.scheduler.remove(id);
        if let Some(rt) = self.seqs.remove(&id) {
            self.release_waiting_slot(&rt);
            // Gauges first, so whoever sees the request counted also sees its blocks freed.
            self.publish();
            self.stats.finished.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn reap_cancelled(&mut self) {
        let gone: Vec<SeqId> = self.seqs.iter().filter(|(_, rt)| rt.is_cancelled()).map(|(id, _)| *id).collect();
        for id in gone {
            if let Some(rt) = self.seqs.get_mut(&id) {
                rt.finish(FinishReason::Cancelled, String::new(), &self.model.name);
            }
            self.stats.cancelled.fetch_add(1, Ordering::AcqRel);
            self.end(id);
        }
        self.publish();
    }

    fn fail_all(&mut self, e: EngineError) {
        let ids: Vec<SeqId> = self.seqs.keys().copied().collect();
        for id in ids {
            if let Some(rt) = self.seqs.get_mut(&id) {
                rt.fail(e.clone());
            }
            self.end(id);
        }
        // Start from a clean slate: block tables of failed sequences are gone with them.
        self.scheduler = Scheduler::new(self.sched_cfg.clone());
        self.publish();
    }

    fn publish(&self) {
        let pool = self.scheduler.kv().pool();
        let s = &self.stats;
        s.kv_blocks_used.store(pool.num_blocks() - pool.num_free(), Ordering::Release);
        s.running.store(self.scheduler.num_running(), Ordering::Release);
        let p = self.scheduler.kv().prefix_stats();
        s.prefix_queried_tokens.store(p.queried_tokens, Ordering::Release);
        s.prefix_hit_tokens.store(p.hit_tokens, Ordering::Release);
        s.preemptions.store(self.scheduler.stats().preemptions, Ordering::Release);
    }

    fn step(&mut self) {
        let plan = self.scheduler.schedule();
        if plan.scheduled.is_empty() {
            // Nothing fits right now (should not happen: oversized requests are refused).
            std::thread::sleep(std::time::Duration::from_millis(1));
            return;
        }
        for item in &plan.scheduled {
            if let Some(rt) = self.seqs.get_mut(&item.id)
                && rt.mark_scheduled() {
                    self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
                    self.stats.prompt_tokens.fetch_add(rt.usage.prompt_tokens as u64, Ordering::AcqRel);
                    rt.usage.cached_tokens = item.start;
                }
        }
        let step_started = std::time::Instant::now();
        let mut logits = std::mem::take(&mut self.logits);
        let rows = match self.run_batch(&plan, &mut logits) {
            Ok(r) => r,
            Err(e) => {
                for item in &plan.scheduled {
                    if let Some(rt) = self.seqs.get_mut(&item.id) {
                        rt.fail(e.clone());
                    }
                    self.end(item.id);
                }
                self.publish();
                return;
            }
        };
        self.stats.steps.fetch_add(1, Ordering::AcqRel);
        let mut sampled = Vec::new();
        let mut samples = Vec::new();
        let vocab = self.model.model.cfg.vocab_size;
        let mut at = 0;
        for (item, k) in plan.scheduled.iter().zip(rows) {
            let row = &mut logits[at * vocab..(at + k) * vocab];
            at += k;
            if !item.sample {
                continue;
            }
            if let Some(rt) = self.seqs.get_mut(&item.id) {
                let (tok, lp) = rt.sampler.sample(row);
                sampled.push((item.id, tok));
                samples.push((item.id, tok, lp));
            }
        }
        self.logits = logits;
        // Each sequence's share of this step, by its tokens in it (for per-request cost).
        let step_time = step_started.elapsed();
        let step_tokens: usize = plan.scheduled.iter().map(|i| i.len).sum::<usize>().max(1);
        for item in &plan.scheduled {
            if let Some(rt) = self.seqs.get_mut(&item.id) {
                rt.usage.compute_time += step_time.mul_f64(item.len as f64 / step_tokens as f64);
            }
        }
        self.scheduler.complete(&plan, &sampled);
        self.stats.generated_tokens.fetch_add(sampled.len() as u64, Ordering::AcqRel);
        for (id, tok, lp) in samples {
            let Some(rt) = self.seqs.get_mut(&id) else { continue };
            if rt.on_token(&self.model.tokenizer, &self.model.name, tok, lp).is_some() {
                self.end(id);
            }
        }
        self.publish();
    }

    /// One forward pass over the plan, its logits into `logits`; returns each scheduled
    /// sequence's row count there.
    fn run_batch(&mut self, plan: &StepPlan, logits: &mut Vec<f32>) -> Result<Vec<usize>, EngineError> {
        let mut tokens = Vec::with_capacity(plan.scheduled.len());
        let mut tables = Vec::with_capacity(plan.scheduled.len());
        for item in &plan.scheduled {
            let all = self.scheduler.tokens(item.id).unwrap_or(&[]);
            tokens.push(all.get(item.start..item.start + item.len).unwrap_or(&[]).to_vec());
            tables.push(self.scheduler.kv().block_table(item.id).iter().map(|b| b.0).collect::<Vec<u32>>());
        }
        let batch: Vec<BatchSeq<'_>> = plan
            .scheduled
            .iter()
            .enumerate()
            .map(|(i, item)| BatchSeq {
                tokens: &tokens[i],
                start_pos: item.start,
                block_table: &tables[i],
                prompt_len: self.seqs.get(&item.id).map_or(0, |rt| rt.usage.prompt_tokens),
                logits: item.sample.then_some(Logits::Last),
            })
            .collect();
        self.model.model.forward_batch_into(&batch, &mut self.kv, logits).map_err(|e| EngineError::Model(e.to_string()))
    }
}
