//! One request's life inside the engine: sampling state, incremental detokenization, stop
//! sequences, its event stream, and the accounting that is reported when it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sluice_model::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::engine::{EngineStats, Event, FinishReason, GenerateRequest, Job, RequestUsage};
use crate::error::EngineError;
use crate::sampling::{Logprobs, Sampler};
use crate::stop::StopMatcher;

pub(crate) struct SeqRuntime {
    pub(crate) request_id: String,
    events: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    pub(crate) sampler: Sampler,
    decoder: StreamDecoder,
    stops: StopMatcher,
    max_tokens: usize,
    ignore_eos: bool,
    pub(crate) usage: RequestUsage,
    queued_at: Instant,
    /// When the scheduler first gave it a step (None while waiting).
    pub(crate) first_scheduled: Option<Instant>,
    last_token_at: Option<Instant>,
    stats: Arc<EngineStats>,
}

impl SeqRuntime {
    pub(crate) fn new(job: Job, stats: Arc<EngineStats>) -> (Self, GenerateRequest) {
        let Job { req, events, cancel, queued_at } = job;
        let rt = Self {
            request_id: req.request_id.clone(),
            events,
            cancel,
            sampler: Sampler::new(req.sampling.clone(), &req.prompt),
            decoder: StreamDecoder::default(),
            stops: StopMatcher::new(req.stop.clone()),
            max_tokens: req.max_tokens,
            ignore_eos: req.ignore_eos,
            usage: RequestUsage { prompt_tokens: req.prompt.len(), ..Default::default() },
            queued_at,
            first_scheduled: None,
            last_token_at: None,
            stats,
        };
        (rt, req)
    }

    /// The client went away or asked to stop.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire) || self.events.is_closed()
    }

    pub(crate) fn mark_scheduled(&mut self) -> bool {
        if self.first_scheduled.is_some() {
            return false;
        }
        let now = Instant::now();
        self.first_scheduled = Some(now);
        self.usage.queue_time = now - self.queued_at;
        true
    }

    /// Handles a sampled token; returns the finish reason when the sequence is done (the final
    /// event has then been sent).
    pub(crate) fn on_token(&mut self, tok: &Tokenizer, model: &str, id: u32, logprobs: Option<Logprobs>) -> Option<FinishReason> {
        self.usage.completion_tokens += 1;
        let now = Instant::now();
        match self.last_token_at {
            None => {
                self.usage.time_to_first_token = now - self.queued_at;
                self.stats.latency.ttft.observe(self.usage.time_to_first_token.as_secs_f64());
            }
            Some(prev) => self.stats.latency.itl.observe((now - prev).as_secs_f64()),
        }
        self.last_token_at = Some(now);
        if !self.ignore_eos && tok.is_end_of_generation(id) {
            let _ = self.events.send(Event::Token { id, text: String::new(), logprobs });
            let tail = self.decoder.finish();
            let (text, _) = self.stops.push(&tail);
            let text = text + &self.stops.flush();
            self.finish(FinishReason::Stop, text, model);
            return Some(FinishReason::Stop);
        }
        let piece = self.decoder.push(tok.token_bytes(id, false));
        let (text, stopped) = self.stops.push(&piece);
        let _ = self.events.send(Event::Token { id, text, logprobs });
        if stopped {
            self.finish(FinishReason::Stop, String::new(), model);
            return Some(FinishReason::Stop);
        }
        if self.usage.completion_tokens >= self.max_tokens {
            let tail = self.decoder.finish();
            let (text, stopped) = self.stops.push(&tail);
            let text = if stopped { text } else { text + &self.stops.flush() };
            let reason = if stopped { FinishReason::Stop } else { FinishReason::Length };
            self.finish(reason, text, model);
            return Some(reason);
        }
        None
    }

    /// Sends the final event and logs the request (every request ends here or in `fail`).
    pub(crate) fn finish(&mut self, reason: FinishReason, text: String, model: &str) {
        self.usage.total_time = self.queued_at.elapsed();
        if reason != FinishReason::Cancelled {
            self.stats.latency.e2e.observe(self.usage.total_time.as_secs_f64());
        }
        let usage = self.usage;
        let _ = self.events.send(Event::Done { finish: reason, text, usage });
        tracing::info!(
            request_id = %self.request_id,
            model,
            finish = reason.as_str(),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            queue_ms = usage.queue_time.as_millis() as u64,
            ttft_ms = usage.time_to_first_token.as_millis() as u64,
            total_ms = usage.total_time.as_millis() as u64,
            "request finished"
        );
    }

    /// Ends the request with an error.
    pub(crate) fn fail(&mut self, e: EngineError) {
        let _ = self.events.send(Event::Error(e.clone()));
        tracing::warn!(request_id = %self.request_id, error = %e, kind = e.kind(), "request failed");
    }
}
