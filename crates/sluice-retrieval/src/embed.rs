//! The embedding service: one thread owns the model and turns whatever is queued into as few
//! forwards as possible — concurrent requests share a forward, a large request is split into
//! forwards of at most `max_batch_tokens` tokens. Callers wait on a oneshot channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use sluice_model::EmbeddingModel;
use tokio::sync::oneshot;

use crate::error::RetrievalError;

/// The embedding models served, by name.
pub type Embedders = Arc<std::collections::BTreeMap<String, EmbeddingService>>;

/// Tokens in one forward, at most (bounds the activations: ~6 KiB per token for MiniLM).
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 8192;

struct Job {
    inputs: Vec<Vec<u32>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, RetrievalError>>,
}

/// Counters of the service.
#[derive(Debug, Default)]
pub struct EmbedStats {
    /// Forward passes run.
    pub forwards: AtomicU64,
    /// Inputs embedded.
    pub inputs: AtomicU64,
    /// Tokens embedded.
    pub tokens: AtomicU64,
}

/// Vectors with the tokens they took.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// One normalised vector per input, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read (special tokens included).
    pub tokens: usize,
}

/// A running embedding model.
#[derive(Clone)]
pub struct EmbeddingService {
    model: Arc<EmbeddingModel>,
    tx: mpsc::SyncSender<Job>,
    /// Counters.
    pub stats: Arc<EmbedStats>,
}

impl std::fmt::Debug for EmbeddingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingService").field("model", &self.model.name).finish()
    }
}

impl EmbeddingService {
    /// Starts the thread; `queue` requests may wait before callers are told to retry.
    pub fn start(model: EmbeddingModel, queue: usize, max_batch_tokens: usize) -> Result<Self, RetrievalError> {
        let model = Arc::new(model);
        let stats = Arc::new(EmbedStats::default());
        let (tx, rx) = mpsc::sync_channel::<Job>(queue.max(1));
        let (m, s) = (model.clone(), stats.clone());
        let cap = max_batch_tokens.max(model.max_tokens());
        std::thread::Builder::new()
            .name("sluice-embed".into())
            .spawn(move || run(&m, &s, &rx, cap))
            .map_err(|e| RetrievalError::Model(format!("cannot start the embedding thread: {e}")))?;
        Ok(Self { model, tx, stats })
    }

    /// The model (tokenizer and chunking use it directly).
    pub fn model(&self) -> &EmbeddingModel {
        &self.model
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.model.name
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.model.dim()
    }

    /// Longest input, in tokens.
    pub fn max_tokens(&self) -> usize {
        self.model.max_tokens()
    }

    /// Token ids of `text` (special tokens included).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, RetrievalError> {
        self.model.tokenize(text).map_err(|e| RetrievalError::Model(e.to_string()))
    }

    /// Token ids (special tokens included) of each text, tokenized off the async threads.
    pub async fn tokenize_all(&self, texts: Vec<String>) -> Result<Vec<Vec<u32>>, RetrievalError> {
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || texts.iter().map(|t| model.tokenize(t)).collect::<Result<Vec<_>, _>>())
            .await
            .map_err(|e| RetrievalError::Model(e.to_string()))?
            .map_err(|e| RetrievalError::Model(e.to_string()))
    }

    /// Embeds texts. An input over the model's limit is refused unless `truncate` is set,
    /// in which case it is cut to the limit.
    pub async fn embed_texts(&self, texts: &[String], truncate: bool) -> Result<Embedded, RetrievalError> {
        let ids = self.tokenize_all(texts.to_vec()).await?;
        self.embed_ids(ids, truncate).await
    }

    /// Embeds token-id inputs (each with its special tokens), as `embed_texts`.
    pub async fn embed_ids(&self, mut ids: Vec<Vec<u32>>, truncate: bool) -> Result<Embedded, RetrievalError> {
        let max = self.max_tokens();
        for (index, t) in ids.iter_mut().enumerate() {
            if t.is_empty() {
                return Err(RetrievalError::Invalid(format!("input {index} is empty")));
            }
            if t.len() > max {
                if !truncate {
                    return Err(RetrievalError::InputTooLong { index, tokens: t.len(), max, model: self.model.name.clone() });
                }
                self.model.truncate(t);
            }
        }
        let tokens = ids.iter().map(Vec::len).sum();
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Job { inputs: ids, reply }).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => RetrievalError::Overloaded,
            mpsc::TrySendError::Disconnected(_) => RetrievalError::Stopped,
        })?;
        let vectors = rx.await.map_err(|_| RetrievalError::Stopped)??;
        Ok(Embedded { vectors, tokens })
    }
}

/// The thread: take what is queued, pack it into forwards of at most `cap` tokens, answer.
fn run(model: &EmbeddingModel, stats: &EmbedStats, rx: &mpsc::Receiver<Job>, cap: usize) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut queued: usize = jobs[0].inputs.iter().map(Vec::len).sum();
        while queued < cap {
            match rx.try_recv() {
                Ok(j) => {
                    queued += j.inputs.iter().map(Vec::len).sum::<usize>();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        // Every input of every job, in order, packed greedily into forwards.
        let all: Vec<&Vec<u32>> = jobs.iter().flat_map(|j| j.inputs.iter()).collect();
        let mut out: Vec<Vec<f32>> = Vec::with_capacity(all.len());
        let mut failed = None;
        let mut start = 0;
        while start < all.len() && failed.is_none() {
            let mut end = start;
            let mut n = 0;
            while end < all.len() && (end == start || n + all[end].len() <= cap) {
                n += all[end].len();
                end += 1;
            }
            let batch: Vec<Vec<u32>> = all[start..end].iter().map(|v| (*v).clone()).collect();
            match model.embed(&batch) {
                Ok(v) => out.extend(v),
                Err(e) => failed = Some(RetrievalError::Model(e.to_string())),
            }
            stats.forwards.fetch_add(1, Ordering::Relaxed);
            stats.inputs.fetch_add((end - start) as u64, Ordering::Relaxed);
            stats.tokens.fetch_add(n as u64, Ordering::Relaxed);
            start = end;
        }
        let mut vectors = out.into_iter();
        for j in jobs {
            let answer = match &failed {
                Some(e) => Err(e.clone()),
                None => Ok(vectors.by_ref().take(j.inputs.len()).collect()),
            };
            // A caller that went away no longer wants its answer.
            let _ = j.reply.send(answer);
        }
    }
}
