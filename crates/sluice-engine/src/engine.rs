//! The engine's public face: configuration, requests, per-request event streams and the handle
//! that submits to the engine thread (`worker`). Requests arrive over a channel; admission is
//! bounded (a full queue is refused at once); each request gets its own event stream and a
//! cancellation token that the engine checks before every step, so a dropped client stops
//! costing compute — and frees its KV blocks — within one step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use sluice_model::quant::Numerics;
use sluice_model::{KvDtype, LoadedModel, PagedKv};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::error::EngineError;
use crate::sampling::{Logprobs, SamplingParams};
use crate::worker::Worker;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests that may wait for the engine; beyond this `submit` fails with `QueueFull`.
    pub max_waiting: usize,
    /// Tokens per step (prefill chunks and decodes together).
    pub max_num_batched_tokens: usize,
    /// Prompt tokens per step while sequences are decoding: bounds the pause a prefill puts in
    /// their streams (one 512-token chunk is ~0.25 s on two cores).
    pub max_prefill_tokens_with_decodes: usize,
    /// Sequences per step.
    pub max_num_seqs: usize,
    /// Bytes of KV memory (sets the number of blocks).
    pub kv_cache_bytes: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// How keys and values are stored (half precision by default, as in llama.cpp).
    pub kv_cache_dtype: KvDtype,
    /// How the model's matrix products round; whoever loads the model applies it
    /// (`Model::set_numerics`) before starting the engine.
    pub numerics: Numerics,
    /// Reuse cached prompt prefixes across requests of the same namespace.
    pub prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_waiting: 64,
            max_num_batched_tokens: 512,
            max_prefill_tokens_with_decodes: 128,
            max_num_seqs: 32,
            kv_cache_bytes: 1 << 30,
            block_size: 16,
            kv_cache_dtype: KvDtype::F16,
            numerics: Numerics::Reference,
            prefix_caching: true,
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Identifies the request (and choice) in logs.
    pub request_id: String,
    /// Prompt token ids (non-empty; BOS included when the model wants one).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (prompt + this must fit the context window).
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Stop sequences (never emitted).
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Prefix-cache namespace chosen by the server (never taken from the request body).
    pub cache_salt: Vec<u8>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The client went away.
    Cancelled,
}

impl FinishReason {
    /// OpenAI's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Token counts and timings of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestUsage {
    /// Prompt tokens processed.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Time from start of processing to the first generated token.
    pub time_to_first_token: Duration,
    /// Time from start of processing to the end.
    pub total_time: Duration,
    /// Time spent waiting in the queue.
    pub queue_time: Duration,
    /// Prompt tokens found in the prefix cache when it was first scheduled.
    pub cached_tokens: usize,
    /// Its share of the engine steps it took part in: each step's time × its tokens in the
    /// step ÷ the step's tokens.
    pub compute_time: Duration,
}

/// One event of a request's stream.
#[derive(Debug, Clone)]
pub enum Event {
    /// A generated token and the text it released (possibly empty: held for UTF-8 or a
    /// possible stop sequence).
    Token {
        /// Token id.
        id: u32,
        /// Newly released text.
        text: String,
        /// Log-probabilities, when asked for.
        logprobs: Option<Logprobs>,
    },
    /// Generation ended; always the last event unless `Error`.
    Done {
        /// Why.
        finish: FinishReason,
        /// Text released at the end (held back text, when no stop matched).
        text: String,
        /// Counts and timings.
        usage: RequestUsage,
    },
    /// The request failed.
    Error(EngineError),
}

/// Counters that show what the engine is doing (tests, metrics).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Forward passes run.
    pub steps: AtomicU64,
    /// Requests currently being processed (0 or 1).
    pub running: AtomicUsize,
    /// Requests waiting in the queue.
    pub waiting: AtomicUsize,
    /// Requests finished (any reason).
    pub finished: AtomicU64,
    /// Requests cancelled by their client.
    pub cancelled: AtomicU64,
    /// Tokens generated in total.
    pub generated_tokens: AtomicU64,
    /// Prompt tokens processed in total.
    pub prompt_tokens: AtomicU64,
    /// Set when the engine thread has exited (it should not, while handles exist).
    pub stopped: AtomicBool,
    /// Sequences preempted (blocks reclaimed, recomputed later).
    pub preemptions: AtomicU64,
    /// KV blocks in the pool.
    pub kv_blocks_total: AtomicUsize,
    /// KV blocks held by live sequences.
    pub kv_blocks_used: AtomicUsize,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queried_tokens: AtomicU64,
    /// Prompt tokens found there.
    pub prefix_hit_tokens: AtomicU64,
    /// Latency histograms.
    pub latency: crate::metrics::Latencies,
}

/// Marks the engine stopped when the worker thread ends, however it ends.
pub(crate) struct StoppedOnDrop(pub(crate) Arc<EngineStats>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
    }
}

pub(crate) struct Job {
    pub(crate) req: GenerateRequest,
    pub(crate) events: UnboundedSender<Event>,
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) queued_at: Instant,
}

/// The receiving end of one request; dropping it cancels the request.
#[derive(Debug)]
pub struct RequestStream {
    /// Events in order.
    pub events: UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl RequestStream {
    /// Next event; `None` after the last.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Asks the engine to stop this request at its next step.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A cheap, cloneable handle on the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Job>,
    capacity: usize,
    block_size: usize,
    num_blocks: usize,
    /// What the engine is doing.
    pub stats: Arc<EngineStats>,
    /// The model it serves.
    pub model: Arc<LoadedModel>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").field("model", &self.model.name).finish()
    }
}

impl EngineHandle {
    /// Starts the engine thread for `model`, with KV memory sized from `cfg.kv_cache_bytes`.
    pub fn start(model: Arc<LoadedModel>, cfg: EngineConfig) -> Result<Self, EngineError> {
        let capacity = cfg.max_waiting.max(1);
        let block_size = cfg.block_size.max(1);
        cfg.kv_cache_dtype.check(&model.model.cfg, block_size).map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        let per_block = PagedKv::bytes_per_block(&model.model.cfg, block_size, cfg.kv_cache_dtype);
        let num_blocks = cfg.kv_cache_bytes / per_block.max(1);
        if num_blocks == 0 {
            return Err(EngineError::InvalidRequest(format!(
                "the KV cache budget of {} bytes holds no block ({per_block} bytes each)",
                cfg.kv_cache_bytes
            )));
        }
        // The waiting bound is enforced at submit; the channel only needs room for it.
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity + 1);
        let stats = Arc::new(EngineStats::default());
        stats.kv_blocks_total.store(num_blocks, Ordering::Release);
        let worker = Worker::new(model.clone(), cfg, num_blocks, stats.clone());
        std::thread::Builder::new()
            .name("sluice-engine".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::Model(format!("cannot start the engine thread: {e}")))?;
        Ok(Self { tx, capacity, block_size, num_blocks, stats, model })
    }

    /// Positions the KV pool can hold in total.
    pub fn kv_capacity_tokens(&self) -> usize {
        self.num_blocks * self.block_size
    }

    /// Whether the engine thread is running.
    pub fn is_alive(&self) -> bool {
        !self.stats.stopped.load(Ordering::Acquire)
    }

    /// Queues a request; fails at once when the queue is full.
    pub fn submit(&self, req: GenerateRequest) -> Result<RequestStream, EngineError> {
        let ctx = self.model.model.cfg.context_length;
        if req.prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if req.prompt.len() + req.max_tokens > ctx {
            return Err(EngineError::InvalidRequest(format!(
                "{} prompt tokens + {} max tokens exceed the context window of {ctx}",
                req.prompt.len(),
                req.max_tokens
            )));
        }
        // A sequence must fit the whole KV pool on its own, or preemption could never finish it.
        let need = req.prompt.len() + req.max_tokens;
        if need > self.kv_capacity_tokens() {
            return Err(EngineError::InvalidRequest(format!(
                "{need} tokens (prompt + max tokens) exceed the KV cache of {} tokens; lower max_tokens or raise --kv-cache-memory",
                self.kv_capacity_tokens()
            )));
        }
        // Reserve a waiting slot atomically; the worker releases it when the request starts.
        let reserved = self.stats.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (w < self.capacity).then_some(w + 1)
        });
        if reserved.is_err() {
            return Err(EngineError::QueueFull { capacity: self.capacity });
        }
        let (events_tx, events_rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job { req, events: events_tx, cancel: cancel.clone(), queued_at: Instant::now() };
        match self.tx.try_send(job) {
            Ok(()) => Ok(RequestStream { events: events_rx, cancel }),
            Err(e) => {
                self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    TrySendError::Full(_) => EngineError::QueueFull { capacity: self.capacity },
                    TrySendError::Disconnected(_) => EngineError::Stopped,
                })
            }
        }
    }
}

