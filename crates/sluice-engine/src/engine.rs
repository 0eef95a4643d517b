//! The engine thread. It owns the model and runs one request at a time (continuous batching
//! replaces this loop later); requests arrive over a bounded channel, each gets its own event
//! stream and a cancellation token that is checked before every forward pass, so a dropped
//! client stops costing compute within one step.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use sluice_model::{KvCache, LoadedModel, Logits, StreamDecoder};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::error::EngineError;
use crate::sampling::{Logprobs, Sampler, SamplingParams};
use crate::stop::StopMatcher;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests that may wait for the engine; beyond this `submit` fails with `QueueFull`.
    pub max_waiting: usize,
    /// Prompt tokens per prefill forward pass.
    pub prefill_chunk: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { max_waiting: 64, prefill_chunk: 512 }
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
}

/// Marks the engine stopped when the worker thread ends, however it ends.
struct StoppedOnDrop(Arc<EngineStats>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
    }
}

struct Job {
    req: GenerateRequest,
    events: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    queued_at: Instant,
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
    /// Starts the engine thread for `model`.
    pub fn start(model: Arc<LoadedModel>, cfg: EngineConfig) -> Result<Self, EngineError> {
        let capacity = cfg.max_waiting.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let stats = Arc::new(EngineStats::default());
        let worker = Worker { model: model.clone(), cfg, stats: stats.clone() };
        std::thread::Builder::new()
            .name("sluice-engine".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::Model(format!("cannot start the engine thread: {e}")))?;
        Ok(Self { tx, capacity, stats, model })
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
        let (events_tx, events_rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job { req, events: events_tx, cancel: cancel.clone(), queued_at: Instant::now() };
        self.stats.waiting.fetch_add(1, Ordering::AcqRel);
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

struct Worker {
    model: Arc<LoadedModel>,
    cfg: EngineConfig,
    stats: Arc<EngineStats>,
}

impl Worker {
    fn run(self, rx: Receiver<Job>) {
        let _guard = StoppedOnDrop(self.stats.clone());
        while let Ok(job) = rx.recv() {
            self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
            self.stats.running.fetch_add(1, Ordering::AcqRel);
            let events = job.events.clone();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.generate(job)));
            if outcome.is_err() {
                let _ = events.send(Event::Error(EngineError::Model("internal engine error".into())));
                // Even logging may be what failed: the engine thread must survive it.
                let _ = std::panic::catch_unwind(|| tracing::error!("engine: a request panicked; the engine keeps serving"));
            }
            self.stats.running.fetch_sub(1, Ordering::AcqRel);
            self.stats.finished.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>, EngineError> {
        self.stats.steps.fetch_add(1, Ordering::AcqRel);
        self.model.model.forward(tokens, cache, which).map_err(|e| EngineError::Model(e.to_string()))
    }

    fn generate(&self, job: Job) {
        let Job { req, events, cancel, queued_at } = job;
        let started = Instant::now();
        let mut usage = RequestUsage { prompt_tokens: req.prompt.len(), queue_time: started - queued_at, ..Default::default() };
        let cancelled = || cancel.load(Ordering::Acquire) || events.is_closed();
        let finish = |reason: FinishReason, text: String, mut usage: RequestUsage| {
            usage.total_time = started.elapsed();
            if reason == FinishReason::Cancelled {
                self.stats.cancelled.fetch_add(1, Ordering::AcqRel);
            }
            let _ = events.send(Event::Done { finish: reason, text, usage });
            // Every request is accounted for here, including those whose client left.
            tracing::info!(
                request_id = %req.request_id,
                model = %self.model.name,
                finish = reason.as_str(),
                prompt_tokens = usage.prompt_tokens,
                completion_tokens = usage.completion_tokens,
                queue_ms = usage.queue_time.as_millis() as u64,
                ttft_ms = usage.time_to_first_token.as_millis() as u64,
                total_ms = usage.total_time.as_millis() as u64,
                "request finished"
            );
        };
        let fail = |e: EngineError| {
            tracing::warn!(request_id = %req.request_id, error = %e, kind = e.kind(), "request failed");
            let _ = events.send(Event::Error(e));
        };
        let tok = &self.model.tokenizer;
        let mut cache = KvCache::new(&self.model.model.cfg, req.prompt.len() + req.max_tokens);
        let mut logits = Vec::new();
        for chunk in req.prompt.chunks(self.cfg.prefill_chunk.max(1)) {
            if cancelled() {
                return finish(FinishReason::Cancelled, String::new(), usage);
            }
            logits = match self.forward(chunk, &mut cache, Logits::Last) {
                Ok(l) => l,
                Err(e) => return fail(e),
            };
        }
        self.stats.prompt_tokens.fetch_add(req.prompt.len() as u64, Ordering::AcqRel);
        let mut sampler = Sampler::new(req.sampling.clone(), &req.prompt);
        let mut decoder = StreamDecoder::default();
        let mut stops = StopMatcher::new(req.stop.clone());
        loop {
            let (id, logprobs) = sampler.sample(&mut logits);
            usage.completion_tokens += 1;
            self.stats.generated_tokens.fetch_add(1, Ordering::AcqRel);
            if usage.completion_tokens == 1 {
                usage.time_to_first_token = started.elapsed();
            }
            if !req.ignore_eos && tok.is_end_of_generation(id) {
                let _ = events.send(Event::Token { id, text: String::new(), logprobs });
                let tail = decoder.finish();
                let (text, _) = stops.push(&tail);
                return finish(FinishReason::Stop, text + &stops.flush(), usage);
            }
            let piece = decoder.push(tok.token_bytes(id, false));
            let (text, stopped) = stops.push(&piece);
            let _ = events.send(Event::Token { id, text, logprobs });
            if stopped {
                return finish(FinishReason::Stop, String::new(), usage);
            }
            if usage.completion_tokens >= req.max_tokens {
                let tail = decoder.finish();
                let (text, stopped) = stops.push(&tail);
                let text = if stopped { text } else { text + &stops.flush() };
                let reason = if stopped { FinishReason::Stop } else { FinishReason::Length };
                return finish(reason, text, usage);
            }
            if cancelled() {
                return finish(FinishReason::Cancelled, String::new(), usage);
            }
            logits = match self.forward(&[id], &mut cache, Logits::Last) {
                Ok(l) => l,
                Err(e) => return fail(e),
            };
        }
    }
}
