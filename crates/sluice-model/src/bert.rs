//! BERT-family encoders for sentence embeddings (all-MiniLM-L6-v2 and its kin), from a Hugging
//! Face directory: `config.json` + `model.safetensors` + `tokenizer.json`.
//!
//! One forward runs over the concatenated tokens of many texts (no padding, like the decoder's
//! flattened batches): the matrix products see every token of the batch at once, attention is
//! bidirectional within each text. The sentence vector is the mean of a text's last hidden
//! states, L2-normalised — sentence-transformers' Pooling(mean) + Normalize.

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;
use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::hf::SafetensorsSource;
use crate::model::TensorSource;
use crate::sgemm::sgemm_nt;
use crate::weights::QMatrix;

/// The `config.json` fields of a BERT encoder.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width (the embedding dimension).
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Longest input, in tokens (position embeddings).
    pub max_position_embeddings: usize,
    /// Token types (segments).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f32,
    /// Activation; only exact GELU is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// `bert` (others are refused).
    #[serde(default)]
    pub model_type: String,
}

fn default_eps() -> f32 {
    1e-12
}

fn default_type_vocab() -> usize {
    2
}

fn default_act() -> String {
    "gelu".into()
}

/// A dense layer, its weights decoded to f32 once at load (encoders are small; the product
/// then runs on register-tiled f32 kernels).
struct Linear {
    w: Vec<f32>,
    rows: usize,
    cols: usize,
    b: Vec<f32>,
}

impl Linear {
    fn load(src: &dyn TensorSource, name: &str, rows: usize, cols: usize) -> Result<Self> {
        let m = src.matrix(&format!("{name}.weight"), rows, cols)?;
        let mut w = vec![0f32; rows * cols];
        for (r, row) in w.chunks_exact_mut(cols).enumerate() {
            m.dequantize_row(r, row);
        }
        Ok(Self { w, rows, cols, b: src.vector(&format!("{name}.bias"), rows)? })
    }

    /// `x · Wᵀ + b` for every row of `x`.
    fn apply(&self, x: &[f32], out: &mut Vec<f32>) {
        let n = x.len() / self.cols;
        out.clear();
        out.resize(n * self.rows, 0.0);
        sgemm_nt(&self.w, x, self.cols, out);
        for row in out.chunks_exact_mut(self.rows) {
            for (v, b) in row.iter_mut().zip(&self.b) {
                *v += b;
            }
        }
    }
}

struct LayerNorm {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl LayerNorm {
    fn load(src: &dyn TensorSource, name: &str, dim: usize) -> Result<Self> {
        Ok(Self { w: src.vector(&format!("{name}.weight"), dim)?, b: src.vector(&format!("{name}.bias"), dim)? })
    }

    fn apply(&self, x: &mut [f32], eps: f32) {
        let d = self.w.len();
        for row in x.chunks_exact_mut(d) {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + f64::from(eps)).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.w).zip(&self.b) {
                *v = ((f64::from(*v) - mean) * inv) as f32 * w + b;
            }
        }
    }
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
}

/// A BERT encoder's weights and forward pass.
pub struct BertEncoder {
    /// Its configuration.
    pub cfg: BertConfig,
    word: QMatrix,
    position: Vec<f32>,
    token_type0: Vec<f32>,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    pool: Arc<rayon::ThreadPool>,
}

impl std::fmt::Debug for BertEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEncoder").field("layers", &self.layers.len()).field("dim", &self.cfg.hidden_size).finish()
    }
}

/// Exact GELU, `x · Φ(x)`, with erf to ~1e-7 (Abramowitz & Stegun 7.1.26 in f64).
fn gelu_erf(x: f32) -> f32 {
    let z = f64::from(x) / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = (1.0 - poly * (-z * z).exp()).copysign(z);
    (0.5 * f64::from(x) * (1.0 + erf)) as f32
}

impl BertEncoder {
    /// Loads the encoder from a Hugging Face directory; `threads` sizes its compute pool.
    pub fn load(dir: &Path, threads: usize) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| ModelError::Io { path: cfg_path.clone(), source })?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| ModelError::InvalidHfDir(format!("{}: {e}", cfg_path.display())))?;
        if cfg.model_type != "bert" {
            return Err(ModelError::UnsupportedArchitecture(format!("{} (as an embedding model)", cfg.model_type)));
        }
        if cfg.hidden_act != "gelu" {
            return Err(ModelError::InvalidHfDir(format!("{}: hidden_act {:?} is not supported", cfg_path.display(), cfg.hidden_act)));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(ModelError::InvalidHfDir(format!("{}: hidden_size must divide into the heads", cfg_path.display())));
        }
        let src = SafetensorsSource::open(dir)?;
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                q: Linear::load(&src, &format!("{p}.attention.self.query"), h, h)?,
                k: Linear::load(&src, &format!("{p}.attention.self.key"), h, h)?,
                v: Linear::load(&src, &format!("{p}.attention.self.value"), h, h)?,
                attn_out: Linear::load(&src, &format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: LayerNorm::load(&src, &format!("{p}.attention.output.LayerNorm"), h)?,
                ffn_in: Linear::load(&src, &format!("{p}.intermediate.dense"), f, h)?,
                ffn_out: Linear::load(&src, &format!("{p}.output.dense"), h, f)?,
                ffn_norm: LayerNorm::load(&src, &format!("{p}.output.LayerNorm"), h)?,
            });
        }
        // Every input is a single segment: token type 0 throughout.
        let type_rows = src.matrix("embeddings.token_type_embeddings.weight", cfg.type_vocab_size, h)?;
        let mut token_type0 = vec![0f32; h];
        type_rows.dequantize_row(0, &mut token_type0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("sluice-embed-{i}"))
            .build()
            .map_err(|e| ModelError::InvalidInput(format!("cannot start compute threads: {e}")))?;
        Ok(Self {
            word: src.matrix("embeddings.word_embeddings.weight", cfg.vocab_size, h)?,
            position: src.vector("embeddings.position_embeddings.weight", cfg.max_position_embeddings * h)?,
            token_type0,
            emb_norm: LayerNorm::load(&src, "embeddings.LayerNorm", h)?,
            layers,
            pool: Arc::new(pool),
            cfg,
        })
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Sentence vectors (mean-pooled, L2-normalised) of `texts`, given as token ids with their
    /// special tokens, in one forward over all their tokens.
    pub fn embed(&self, texts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        for t in texts {
            if t.is_empty() || t.len() > self.cfg.max_position_embeddings {
                return Err(ModelError::InvalidInput(format!(
                    "an input of {} tokens; this model takes 1 to {}",
                    t.len(),
                    self.cfg.max_position_embeddings
                )));
            }
            if let Some(bad) = t.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
                return Err(ModelError::InvalidInput(format!("token id {bad} is outside the vocabulary")));
            }
        }
        Ok(self.pool.install(|| self.forward(texts)))
    }

    fn forward(&self, texts: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let h = self.cfg.hidden_size;
        let eps = self.cfg.layer_norm_eps;
        let total: usize = texts.iter().map(Vec::len).sum();
        let mut spans = Vec::with_capacity(texts.len());
        let mut x = vec![0f32; total * h];
        let mut at = 0;
        for t in texts {
            spans.push((at, t.len()));
            for (pos, &id) in t.iter().enumerate() {
                let row = &mut x[(at + pos) * h..(at + pos + 1) * h];
                self.word.dequantize_row(id as usize, row);
                for ((v, p), ty) in row.iter_mut().zip(&self.position[pos * h..(pos + 1) * h]).zip(&self.token_type0) {
                    *v += p + ty;
                }
            }
            at += t.len();
        }
        self.emb_norm.apply(&mut x, eps);
        let (mut q, mut k, mut v, mut ctx, mut tmp, mut ff) = (Vec::new(), Vec::new(), Vec::new(), vec![0f32; total * h], Vec::new(), Vec::new());
        for l in &self.layers {
            l.q.apply(&x, &mut q);
            l.k.apply(&x, &mut k);
            l.v.apply(&x, &mut v);
            self.attention(&spans, &q, &k, &v, &mut ctx);
            l.attn_out.apply(&ctx, &mut tmp);
            x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);
            l.attn_norm.apply(&mut x, eps);
            l.ffn_in.apply(&x, &mut ff);
            ff.par_chunks_mut(4096).for_each(|c| c.iter_mut().for_each(|v| *v = gelu_erf(*v)));
            l.ffn_out.apply(&ff, &mut tmp);
            x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);
            l.ffn_norm.apply(&mut x, eps);
        }
        spans
            .iter()
            .map(|&(start, n)| {
                let mut mean = vec![0f64; h];
                for row in x[start * h..(start + n) * h].chunks_exact(h) {
                    mean.iter_mut().zip(row).for_each(|(m, v)| *m += f64::from(*v));
                }
                let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt().max(1e-12);
                mean.iter().map(|m| (m / norm) as f32).collect()
            })
            .collect()
    }

    /// Bidirectional attention within each text: `ctx` row i = Σ_j softmax(q_i·k_j/√d) v_j, per head.
    fn attention(&self, spans: &[(usize, usize)], q: &[f32], k: &[f32], v: &[f32], ctx: &mut [f32]) {
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        // Each query row is its own task; rows are found back to their text by the spans.
        let owner: Vec<(usize, usize)> = spans.iter().flat_map(|&(s, n)| (0..n).map(move |_| (s, n))).collect();
        ctx.par_chunks_mut(h).enumerate().for_each(|(i, out)| {
            let (s, n) = owner[i];
            let mut scores = vec![0f32; n];
            for hd in 0..heads {
                let qi = &q[i * h + hd * d..i * h + (hd + 1) * d];
                let mut max = f32::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate() {
                    let kj = &k[(s + j) * h + hd * d..(s + j) * h + (hd + 1) * d];
                    *sc = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                    max = max.max(*sc);
                }
                let mut sum = 0f32;
                for sc in scores.iter_mut() {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let o = &mut out[hd * d..(hd + 1) * d];
                o.fill(0.0);
                for (j, p) in scores.iter().enumerate() {
                    let vj = &v[(s + j) * h + hd * d..(s + j) * h + (hd + 1) * d];
                    let w = p / sum;
                    o.iter_mut().zip(vj).for_each(|(a, b)| *a += w * b);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_known_values() {
        // x·Φ(x) at a few points (Python: 0.5 * x * (1 + math.erf(x / sqrt(2)))).
        for (x, want) in [(0.0f32, 0.0f32), (1.0, 0.841_344_7), (-1.0, -0.158_655_26), (2.5, 2.484_475_8), (-3.0, -0.004_049_694)] {
            assert!((gelu_erf(x) - want).abs() < 1e-6, "gelu({x}) = {}, want {want}", gelu_erf(x));
        }
    }
}
