//! The runtime description of a model, converted once from file metadata (GGUF keys or a
//! Hugging Face `config.json`). Everything the forward pass needs to know lives here.

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// Architecture family; each is built from the same shared layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM2, Mistral (GGUF arch `llama`).
    Llama,
    /// Qwen2: Llama plus q/k/v biases.
    Qwen2,
    /// Gemma 3: QK-norm, post-norms, scaled embeddings, GELU, interleaved sliding windows.
    Gemma3,
}

impl Arch {
    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Gemma3 => "gemma3",
        }
    }
}

/// How rotary embeddings pair up a head's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])`: llama GGUFs, whose Q/K rows are permuted on conversion.
    Interleaved,
    /// Halves `(x[i], x[i + d/2])`: Hugging Face layout, Gemma, Qwen2.
    HalfSplit,
}

/// Gated feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (swish).
    Silu,
    /// GELU, tanh approximation.
    GeluTanh,
}

/// Hyper-parameters of a decoder-only transformer.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Architecture family.
    pub arch: Arch,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Residual stream width.
    pub d_model: usize,
    /// Feed-forward hidden width.
    pub ffn_dim: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Trained context window.
    pub context_length: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Rotary base for global-attention layers.
    pub rope_theta: f32,
    /// Rotary base for sliding-window layers.
    pub rope_theta_local: f32,
    /// Rotary pairing.
    pub rope_style: RopeStyle,
    /// Linear rope scaling: positions are multiplied by this (1 = none).
    pub rope_freq_scale: f32,
    /// Sliding window (tokens) for the layers that use one.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it uses the sliding window.
    pub layer_is_sliding: Vec<bool>,
    /// Multiply token embeddings by this (Gemma: sqrt(d_model)).
    pub embed_scale: f32,
    /// Scale applied to q·k.
    pub attn_scale: f32,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Final logit soft-capping (Gemma 2 style), if any.
    pub final_logit_softcap: Option<f32>,
}

fn usize_key(f: &GgufFile, key: &str) -> Result<usize> {
    let v = f.get_u64(key)?;
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0 && v < (1 << 24))
        .ok_or_else(|| ModelError::MissingOrInvalid(format!("metadata key {key} (value {v})")))
}

impl ModelConfig {
    /// Builds the config from GGUF metadata.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch_name = f.get_str("general.architecture").unwrap_or("").to_string();
        let arch = match arch_name.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            _ => return Err(ModelError::UnsupportedArchitecture(arch_name)),
        };
        let k = |s: &str| format!("{arch_name}.{s}");
        let n_layers = usize_key(f, &k("block_count"))?;
        let d_model = usize_key(f, &k("embedding_length"))?;
        let n_heads = usize_key(f, &k("attention.head_count"))?;
        let n_kv_heads = match f.get(&k("attention.head_count_kv")) {
            Some(_) => usize_key(f, &k("attention.head_count_kv"))?,
            None => n_heads,
        };
        let head_dim = match f.get(&k("attention.key_length")) {
            Some(_) => usize_key(f, &k("attention.key_length"))?,
            None => d_model / n_heads,
        };
        let vocab_size = match f.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(t) => t.len(),
            None => usize_key(f, &k("vocab_size"))?,
        };
        let rope_theta = f.get_f64(&k("rope.freq_base")).unwrap_or(10000.0) as f32;
        let sliding_window = if arch == Arch::Gemma3 {
            f.get(&k("attention.sliding_window")).and_then(|v| v.as_u64()).map(|v| v as usize).filter(|&v| v > 0)
        } else {
            None
        };
        let layer_is_sliding = (0..n_layers).map(|il| sliding_window.is_some() && il % 6 < 5).collect();
        let rope_freq_scale = match f.get_str(&k("rope.scaling.type")) {
            None | Some("none") => 1.0,
            Some("linear") => 1.0 / f.get_f64(&k("rope.scaling.factor")).unwrap_or(1.0) as f32,
            Some(other) => {
                return Err(ModelError::MissingOrInvalid(format!("rope scaling: type {other:?} is not supported yet")));
            }
        };
        let gemma = arch == Arch::Gemma3;
        let cfg = Self {
            arch,
            n_layers,
            d_model,
            ffn_dim: usize_key(f, &k("feed_forward_length"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length: usize_key(f, &k("context_length"))?,
            rms_eps: f.get_f64(&k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
            rope_theta,
            rope_theta_local: if gemma {
                f.get_f64(&k("rope.freq_base_swa")).unwrap_or(10000.0) as f32
            } else {
                rope_theta
            },
            rope_style: if arch == Arch::Llama { RopeStyle::Interleaved } else { RopeStyle::HalfSplit },
            rope_freq_scale,
            sliding_window,
            layer_is_sliding,
            embed_scale: if gemma { (d_model as f32).sqrt() } else { 1.0 },
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
            final_logit_softcap: f.get_f64(&k("final_logit_softcapping")).ok().map(|v| v as f32).filter(|v| *v > 0.0),
        };
        cfg.validate()
    }

    /// Checks the relations between the sizes.
    pub fn validate(self) -> Result<Self> {
        let bad = |what: &str| Err(ModelError::MissingOrInvalid(what.to_string()));
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad("head counts: head_count is not a multiple of head_count_kv");
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim > 512 {
            return bad("head dimension: must be even and at most 512");
        }
        if self.layer_is_sliding.len() != self.n_layers {
            return bad("sliding window pattern");
        }
        Ok(self)
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
