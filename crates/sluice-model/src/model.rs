//! The decoder-only transformer shared by every supported architecture. One forward pass takes
//! a run of new tokens of one sequence, appends their keys/values to the caller's cache and
//! returns logits for the positions asked for.
//!
//! Shapes: activations are `[n_tok × d_model]` row-major; Q is `[n_tok × n_heads·head_dim]`,
//! K/V `[n_tok × n_kv_heads·head_dim]`; weight matrices are `[out × in]` (`QMatrix`).

use std::sync::Arc;

use crate::cache::KvCache;
use crate::config::{Arch, ModelConfig};
use crate::error::{ModelError, Result};
use crate::layers::{self, AttentionInput, Rope};
use crate::quant::{self, Isa};
use crate::weights::{QMatrix, matmul};

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
    pool: Arc<rayon::ThreadPool>,
    tok_embd: QMatrix,
    output: QMatrix,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    rope_global: Rope,
    rope_local: Rope,
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
            output_norm: src.vector("output_norm.weight", d)?,
            cfg,
            isa: quant::detect_isa(),
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

    /// Threads in the compute pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `tokens` (the next positions of the sequence in `cache`) and returns logits,
    /// `vocab_size` per requested position.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(ModelError::InvalidInput("no tokens to run".into()));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(ModelError::InvalidInput(format!("token id {t} outside the vocabulary")));
        }
        cache.check_room(tokens.len())?;
        Ok(self.pool.install(|| self.forward_inner(tokens, cache, which)))
    }

    fn forward_inner(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Vec<f32> {
        let c = &self.cfg;
        let (n, d) = (tokens.len(), c.d_model);
        let start = cache.len();
        let mut x = vec![0f32; n * d];
        for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
            self.tok_embd.dequantize_row(t as usize, row);
            if c.embed_scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= c.embed_scale);
            }
        }
        let mut h = vec![0f32; n * d];
        let mut q = vec![0f32; n * c.q_dim()];
        let mut k = vec![0f32; n * c.kv_dim()];
        let mut v = vec![0f32; n * c.kv_dim()];
        let mut attn = vec![0f32; n * c.q_dim()];
        let mut gate = vec![0f32; n * c.ffn_dim];
        let mut up = vec![0f32; n * c.ffn_dim];
        for (il, l) in self.layers.iter().enumerate() {
            h.copy_from_slice(&x);
            layers::rms_norm(&mut h, &l.attn_norm, c.rms_eps);
            matmul(self.isa, &l.wq, &h, &mut q);
            matmul(self.isa, &l.wk, &h, &mut k);
            matmul(self.isa, &l.wv, &h, &mut v);
            if let Some([bq, bk, bv]) = &l.qkv_bias {
                add_bias(&mut q, bq);
                add_bias(&mut k, bk);
                add_bias(&mut v, bv);
            }
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                layers::rms_norm(&mut q, qn, c.rms_eps);
                layers::rms_norm(&mut k, kn, c.rms_eps);
            }
            let sliding = c.layer_is_sliding[il];
            let rope = if sliding { &self.rope_local } else { &self.rope_global };
            for t in 0..n {
                rope.apply(&mut q[t * c.q_dim()..(t + 1) * c.q_dim()], start + t);
                rope.apply(&mut k[t * c.kv_dim()..(t + 1) * c.kv_dim()], start + t);
            }
            cache.append(il, &k, &v);
            let (kc, vc) = cache.layer(il);
            layers::attention(
                self.isa,
                &AttentionInput {
                    q: &q,
                    k_cache: kc,
                    v_cache: vc,
                    start_pos: start,
                    n_heads: c.n_heads,
                    n_kv_heads: c.n_kv_heads,
                    head_dim: c.head_dim,
                    scale: c.attn_scale,
                    window: if sliding { c.sliding_window } else { None },
                },
                &mut attn,
            );
            matmul(self.isa, &l.wo, &attn, &mut h);
            if let Some(w) = &l.post_attn_norm {
                layers::rms_norm(&mut h, w, c.rms_eps);
            }
            x.iter_mut().zip(&h).for_each(|(a, b)| *a += b);
            h.copy_from_slice(&x);
            layers::rms_norm(&mut h, &l.ffn_norm, c.rms_eps);
            matmul(self.isa, &l.gate, &h, &mut gate);
            matmul(self.isa, &l.up, &h, &mut up);
            layers::gated_activation(c.activation, &mut gate, &up);
            matmul(self.isa, &l.down, &gate, &mut h);
            if let Some(w) = &l.post_ffn_norm {
                layers::rms_norm(&mut h, w, c.rms_eps);
            }
            x.iter_mut().zip(&h).for_each(|(a, b)| *a += b);
        }
        cache.advance(n);
        let rows = match which {
            Logits::Last => &mut x[(n - 1) * d..],
            Logits::All => &mut x[..],
        };
        layers::rms_norm(rows, &self.output_norm, c.rms_eps);
        let mut logits = vec![0f32; rows.len() / d * c.vocab_size];
        matmul(self.isa, &self.output, rows, &mut logits);
        if let Some(cap) = c.final_logit_softcap {
            logits.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        logits
    }
}

fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    }
}
