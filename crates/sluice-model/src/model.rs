//! The decoder-only transformer shared by every supported architecture. One forward pass takes
//! the new tokens of one or several sequences (concatenated, no padding), writes their keys and
//! values into paged KV memory through each sequence's block table, and returns logits for the
//! positions asked for.
//!
//! Shapes: activations are `[n_tok × d_model]` row-major; Q is `[n_tok × n_heads·head_dim]`,
//! K/V `[n_tok × n_kv_heads·head_dim]`; weight matrices are `[out × in]` (`QMatrix`).

use std::sync::Arc;

use crate::cache::{KvCache, PagedKv};
use crate::config::{Arch, ModelConfig};
use crate::error::{ModelError, Result};
use crate::layers::{self, AttentionInput, AttnToken, Rope, SumOrder};
use crate::phases::{Laps, Phase, PhaseTimes, lap};
use crate::quant::{self, Isa, Numerics};
use crate::weights::{QMatrix, matmul, matmul_many};

/// Where a loader finds tensors; names are GGUF's (`blk.N.attn_q.weight`), sources translate.
pub trait TensorSource {
    /// Whether the tensor exists.
    fn has(&self, name: &str) -> bool;
    /// A `[rows × cols]` matrix, checked against the expected shape.
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix>;
    /// A vector of `len` floats.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>>;
}

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    qkv_bias: Option<[Vec<f32>; 3]>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: QMatrix,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
    post_ffn_norm: Option<Vec<f32>>,
}

/// One sequence's part of a batched forward pass.
#[derive(Debug, Clone, Copy)]
pub struct BatchSeq<'a> {
    /// New tokens, at positions `start_pos..`.
    pub tokens: &'a [u32],
    /// Position of the first new token (tokens before it are in the KV blocks).
    pub start_pos: usize,
    /// Block ids holding this sequence's positions, in order.
    pub block_table: &'a [u32],
    /// Length of the sequence's prompt: positions below it hold prompt tokens, the rest
    /// generated ones. Our reference sums attention values in one order for a prompt and in
    /// another for a token decoded alone ([`crate::layers::SumOrder`]); choosing by position
    /// rather than by the step's shape keeps results independent of chunking, batching and
    /// recomputation after preemption.
    pub prompt_len: usize,
    /// Which logits to return, if any.
    pub logits: Option<Logits>,
}

/// Which positions of a forward pass need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's (scoring, tests).
    All,
}

/// A loaded model, ready to run.
pub struct Model {
    /// Hyper-parameters.
    pub cfg: ModelConfig,
    isa: Isa,
    numerics: Numerics,
    pool: Arc<rayon::ThreadPool>,
    tok_embd: QMatrix,
    output: QMatrix,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    rope_global: Rope,
    rope_local: Rope,
    /// A forward pass's activations, kept between passes: allocating them afresh each step
    /// page-faults on the compute path (logits, the largest, live in the caller's buffer: see
    /// [`Model::forward_batch_into`]).
    scratch: std::sync::Mutex<Scratch>,
    /// Phase times summed over passes while timing is on (see [`Model::time_phases`]).
    phases: std::sync::Mutex<Option<PhaseTimes>>,
}

/// See [`Model::scratch`].
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    rows: Vec<f32>,
    /// Each token's rotation angles, `n_tok × head_dim / 2` (global, and local where used).
    angles: Vec<(f32, f32)>,
    angles_local: Vec<(f32, f32)>,
}

/// `buf` as `len` zeros.
fn zeroed(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.clear();
    buf.resize(len, 0.0);
    buf
}

/// `buf` at `len` elements, whatever they hold: for an output a matrix product writes whole
/// (the logits of sixteen sequences are 3 MiB, zeroed for nothing every step otherwise).
fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.truncate(len);
    buf.resize(len, 0.0);
    buf
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("arch", &self.cfg.arch).field("layers", &self.layers.len()).finish()
    }
}

impl Model {
    /// Builds the model from tensors named as in GGUF; `threads` sizes its compute pool.
    pub fn load(cfg: ModelConfig, src: &dyn TensorSource, threads: usize) -> Result<Self> {
        let (d, q_dim, kv_dim, ff) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim(), cfg.ffn_dim);
        let gemma = cfg.arch == Arch::Gemma3;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let qkv_bias = if cfg.arch == Arch::Qwen2 {
                Some([
                    src.vector(&n("attn_q.bias"), q_dim)?,
                    src.vector(&n("attn_k.bias"), kv_dim)?,
                    src.vector(&n("attn_v.bias"), kv_dim)?,
                ])
            } else {
                None
            };
            let opt_vec = |name: &str, len: usize| -> Result<Option<Vec<f32>>> {
                if gemma { src.vector(&n(name), len).map(Some) } else { Ok(None) }
            };
            layers.push(Layer {
                attn_norm: src.vector(&n("attn_norm.weight"), d)?,
                wq: src.matrix(&n("attn_q.weight"), q_dim, d)?,
                wk: src.matrix(&n("attn_k.weight"), kv_dim, d)?,
                wv: src.matrix(&n("attn_v.weight"), kv_dim, d)?,
                qkv_bias,
                q_norm: opt_vec("attn_q_norm.weight", cfg.head_dim)?,
                k_norm: opt_vec("attn_k_norm.weight", cfg.head_dim)?,
                wo: src.matrix(&n("attn_output.weight"), d, q_dim)?,
                post_attn_norm: opt_vec("post_attention_norm.weight", d)?,
                ffn_norm: src.vector(&n("ffn_norm.weight"), d)?,
                gate: src.matrix(&n("ffn_gate.weight"), ff, d)?,
                up: src.matrix(&n("ffn_up.weight"), ff, d)?,
                down: src.matrix(&n("ffn_down.weight"), d, ff)?,
                post_ffn_norm: opt_vec("post_ffw_norm.weight", d)?,
            });
        }
        let tok_embd = src.matrix("token_embd.weight", cfg.vocab_size, d)?;
        let output = if src.has("output.weight") {
            src.matrix("output.weight", cfg.vocab_size, d)?
        } else {
            tok_embd.clone()
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("sluice-compute-{i}"))
            .build()
            .map_err(|e| ModelError::InvalidInput(format!("cannot start compute threads: {e}")))?;
        // Llama 3.1-style frequency factors apply to the global rotary base.
        let freq_factors =
            if src.has("rope_freqs.weight") { Some(src.vector("rope_freqs.weight", cfg.head_dim / 2)?) } else { None };
        Ok(Self {
            rope_global: Rope::new(cfg.head_dim, cfg.rope_theta, cfg.rope_style).scaled(cfg.rope_freq_scale, freq_factors),
            rope_local: Rope::new(cfg.head_dim, cfg.rope_theta_local, cfg.rope_style),
            scratch: Default::default(),
            phases: Default::default(),
            output_norm: src.vector("output_norm.weight", d)?,
            cfg,
            isa: quant::detect_isa(),
            numerics: Numerics::default(),
            pool: Arc::new(pool),
            tok_embd,
            output,
            layers,
        })
    }

    /// Number of parameters (elements of every weight).
    pub fn n_params(&self) -> usize {
        let mats = |l: &Layer| {
            [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down].iter().map(|m| m.rows * m.cols).sum::<usize>()
        };
        let c = &self.cfg;
        let per_layer_vecs = 2 * c.d_model;
        self.layers.iter().map(|l| mats(l) + per_layer_vecs).sum::<usize>() + c.vocab_size * c.d_model + c.d_model
    }

    /// Bytes of weights held (file encoding).
    pub fn weight_bytes(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down].iter().map(|m| m.byte_size()).sum::<usize>())
            .sum();
        l + self.tok_embd.byte_size()
    }

    /// The most common weight encoding among the layer matrices (e.g. "Q4_1").
    pub fn quantization(&self) -> &'static str {
        self.layers.first().map(|l| l.gate.ty.name()).unwrap_or("none")
    }

    /// Which kernels run.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Runs with another kernel family than the best one detected (tests and benchmarks: every
    /// family gives bit-identical results, at different speeds). A family the CPU lacks is
    /// refused.
    pub fn set_isa(&mut self, isa: Isa) -> Result<()> {
        let best = quant::detect_isa();
        let supported = match isa {
            Isa::Scalar => true,
            Isa::Avx2 => best.has_avx2(),
            Isa::Avx512Vnni => best == Isa::Avx512Vnni,
        };
        if !supported {
            return Err(ModelError::InvalidInput(format!("this CPU cannot run {isa:?} kernels")));
        }
        self.isa = isa;
        Ok(())
    }

    /// How the matrix products round.
    pub fn numerics(&self) -> Numerics {
        self.numerics
    }

    /// Chooses the matrix products' rounding: [`Numerics::Reference`] (the default) reproduces
    /// llama.cpp's CPU arithmetic bit for bit, [`Numerics::Fast`] is faster on batches.
    pub fn set_numerics(&mut self, numerics: Numerics) {
        self.numerics = numerics;
    }

    /// Threads in the compute pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `tokens` (the next positions of the sequence in `cache`) and returns logits,
    /// `vocab_size` per requested position. A call with several tokens counts as prompt, a call
    /// with one as a generated token (see [`BatchSeq::prompt_len`]); callers who know better use
    /// [`Model::forward_batch`].
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        cache.check_room(tokens.len())?;
        // As the reference treats a call: several tokens are a prompt, one token a decode step.
        let start_pos = cache.len();
        let prompt_len = if tokens.len() > 1 { start_pos + tokens.len() } else { start_pos };
        let seq = BatchSeq { tokens, start_pos, block_table: &cache.table, prompt_len, logits: Some(which) };
        let mut logits = Vec::new();
        self.forward_batch_into(&[seq], &mut cache.paged, &mut logits)?;
        cache.advance(tokens.len());
        Ok(logits)
    }

    /// Starts (from zero) or stops summing where forward passes spend their time.
    pub fn time_phases(&self, on: bool) {
        *self.phases.lock().unwrap_or_else(|p| p.into_inner()) = on.then(PhaseTimes::default);
    }

    /// The phase times summed since [`Self::time_phases`] turned timing on, if it is on.
    pub fn phase_times(&self) -> Option<PhaseTimes> {
        *self.phases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One step over several sequences at once: their new tokens are concatenated (no padding)
    /// and run through one pass; each token's keys and values land in its sequence's blocks and
    /// its attention reads only that sequence. Returns, per sequence, the logits it asked for
    /// (empty when `logits` is `None`).
    pub fn forward_batch(&self, seqs: &[BatchSeq<'_>], kv: &mut PagedKv) -> Result<Vec<Vec<f32>>> {
        let mut logits = Vec::new();
        let rows = self.forward_batch_into(seqs, kv, &mut logits)?;
        let vocab = self.cfg.vocab_size;
        let mut at = 0;
        Ok(rows
            .into_iter()
            .map(|k| {
                let row = logits[at * vocab..(at + k) * vocab].to_vec();
                at += k;
                row
            })
            .collect())
    }

    /// [`Self::forward_batch`] into a caller's buffer, which a caller stepping repeatedly keeps:
    /// `logits` becomes the rows every sequence asked for, sequence after sequence
    /// (`vocab_size` floats each; 3 MiB for sixteen sequences of a 49k vocabulary, which
    /// per-sequence vectors would allocate, fault in and copy every step). Returns each
    /// sequence's row count.
    pub fn forward_batch_into(&self, seqs: &[BatchSeq<'_>], kv: &mut PagedKv, logits: &mut Vec<f32>) -> Result<Vec<usize>> {
        kv.dtype().check(&self.cfg, kv.block_size)?;
        let mut n = 0;
        for s in seqs {
            if s.tokens.is_empty() {
                return Err(ModelError::InvalidInput("a sequence in the batch has no tokens".into()));
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                return Err(ModelError::InvalidInput(format!("token id {t} outside the vocabulary")));
            }
            let end = s.start_pos + s.tokens.len();
            if end > s.block_table.len() * kv.block_size || s.block_table.iter().any(|&b| b as usize >= kv.num_blocks()) {
                return Err(ModelError::InvalidInput(format!(
                    "block table of {} blocks cannot hold {end} positions",
                    s.block_table.len()
                )));
            }
            n += s.tokens.len();
        }
        if n == 0 {
            return Err(ModelError::InvalidInput("no tokens to run".into()));
        }
        let timing = self.phases.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        let mut laps = timing.then(|| Laps::start(n));
        let rows = self.pool.install(|| self.forward_inner(seqs, n, kv, logits, &mut laps));
        if let (Some(l), Some(sum)) = (laps, self.phases.lock().unwrap_or_else(|p| p.into_inner()).as_mut()) {
            sum.add(&l.finish());
        }
        Ok(rows)
    }

    fn forward_inner(&self, seqs: &[BatchSeq<'_>], n: usize, kv: &mut PagedKv, logits: &mut Vec<f32>, laps: &mut Option<Laps>) -> Vec<usize> {
        let c = &self.cfg;
        let d = c.d_model;
        let tokens: Vec<AttnToken> = seqs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                (0..s.tokens.len()).map(move |j| {
                    let pos = s.start_pos + j;
                    let order = if pos < s.prompt_len { SumOrder::Tiled } else { SumOrder::Dot };
                    AttnToken { pos, seq: i, order }
                })
            })
            .collect();
        let tables: Vec<&[u32]> = seqs.iter().map(|s| s.block_table).collect();
        // Never wait for the scratch: a pool thread waiting inside this pass may run another
        // pass (of a second caller) nested, which must not block on its own outer frame's lock.
        // It then takes fresh buffers. A poisoned lock (a panic mid-pass) guards only scratch.
        let mut guard = match self.scratch.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let mut fresh = Scratch::default();
        let Scratch { x, h, q, k, v, attn, gate, up, rows, angles, angles_local } = guard.as_deref_mut().unwrap_or(&mut fresh);
        let x = zeroed(x, n * d);
        for (row, &t) in x.chunks_exact_mut(d).zip(seqs.iter().flat_map(|s| s.tokens)) {
            self.tok_embd.dequantize_row(t as usize, row);
            if c.embed_scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= c.embed_scale);
            }
        }
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let h = zeroed(h, n * d);
        let q = zeroed(q, n * q_dim);
        let k = zeroed(k, n * kv_dim);
        let v = zeroed(v, n * kv_dim);
        let attn = zeroed(attn, n * q_dim);
        let gate = zeroed(gate, n * c.ffn_dim);
        let up = zeroed(up, n * c.ffn_dim);
        let bs = kv.block_size;
        let row_of = |t: &AttnToken| tables[t.seq][t.pos / bs] as usize * bs + t.pos % bs;
        // Each token's rotation angles, for every layer (the local table only where it differs).
        let half = c.head_dim / 2;
        angles.clear();
        angles_local.clear();
        let sliding_layers = c.layer_is_sliding.iter().any(|&s| s);
        for t in &tokens {
            self.rope_global.angles(t.pos, angles);
            if sliding_layers {
                self.rope_local.angles(t.pos, angles_local);
            }
        }
        for (il, l) in self.layers.iter().enumerate() {
            h.copy_from_slice(x);
            layers::rms_norm(h, &l.attn_norm, c.rms_eps);
            // The rows this layer stores keys and values into arrive while the projections run.
            kv.prefetch_rows(il, kv_dim, tokens.iter().map(row_of));
            lap(laps, Phase::Other);
            matmul_many(self.isa, self.numerics, &[&l.wq, &l.wk, &l.wv], h, &mut [&mut *q, &mut *k, &mut *v]);
            lap(laps, Phase::Qkv);
            if let Some([bq, bk, bv]) = &l.qkv_bias {
                add_bias(q, bq);
                add_bias(k, bk);
                add_bias(v, bv);
            }
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                layers::rms_norm(q, qn, c.rms_eps);
                layers::rms_norm(k, kn, c.rms_eps);
            }
            let sliding = c.layer_is_sliding[il];
            let (rope, table) = if sliding { (&self.rope_local, &*angles_local) } else { (&self.rope_global, &*angles) };
            for (t, tok) in tokens.iter().enumerate() {
                let a = &table[t * half..(t + 1) * half];
                rope.rotate(self.isa, a, &mut q[t * q_dim..(t + 1) * q_dim]);
                rope.rotate(self.isa, a, &mut k[t * kv_dim..(t + 1) * kv_dim]);
                kv.store_row(self.isa, il, row_of(tok), &k[t * kv_dim..(t + 1) * kv_dim], &v[t * kv_dim..(t + 1) * kv_dim]);
            }
            layers::attention(
                self.isa,
                &AttentionInput {
                    q,
                    k_cache: kv.k[il].view(),
                    v_cache: kv.v[il].view(),
                    tokens: &tokens,
                    tables: &tables,
                    block_size: bs,
                    n_heads: c.n_heads,
                    n_kv_heads: c.n_kv_heads,
                    head_dim: c.head_dim,
                    scale: c.attn_scale,
                    scale_query: c.arch == Arch::Gemma3,
                    window: if sliding { c.sliding_window } else { None },
                },
                attn,
            );
            lap(laps, Phase::Attention);
            matmul(self.isa, self.numerics, &l.wo, attn, h);
            lap(laps, Phase::OutProj);
            if let Some(w) = &l.post_attn_norm {
                layers::rms_norm(h, w, c.rms_eps);
            }
            x.iter_mut().zip(h.iter()).for_each(|(a, b)| *a += b);
            h.copy_from_slice(x);
            layers::rms_norm(h, &l.ffn_norm, c.rms_eps);
            lap(laps, Phase::Other);
            matmul_many(self.isa, self.numerics, &[&l.gate, &l.up], h, &mut [&mut *gate, &mut *up]);
            lap(laps, Phase::FfnUp);
            layers::gated_activation(self.isa, c.activation, gate, up);
            lap(laps, Phase::Other);
            matmul(self.isa, self.numerics, &l.down, gate, h);
            lap(laps, Phase::FfnDown);
            if let Some(w) = &l.post_ffn_norm {
                layers::rms_norm(h, w, c.rms_eps);
            }
            x.iter_mut().zip(h.iter()).for_each(|(a, b)| *a += b);
        }
        // Gather the rows that need logits, run the head once over all of them.
        rows.clear();
        let mut counts = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for s in seqs {
            let len = s.tokens.len();
            let range = match s.logits {
                None => offset..offset,
                Some(Logits::Last) => offset + len - 1..offset + len,
                Some(Logits::All) => offset..offset + len,
            };
            counts.push(range.len());
            rows.extend_from_slice(&x[range.start * d..range.end * d]);
            offset += len;
        }
        let logits = sized(logits, rows.len() / d * c.vocab_size);
        if !rows.is_empty() {
            layers::rms_norm(rows, &self.output_norm, c.rms_eps);
            lap(laps, Phase::Other);
            matmul(self.isa, self.numerics, &self.output, rows, logits);
            lap(laps, Phase::Head);
            if let Some(cap) = c.final_logit_softcap {
                logits.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
            }
        }
        counts
    }
}

fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    }
}
