//! Hugging Face directories: `config.json` + `*.safetensors` (F32, F16 or BF16) +
//! `tokenizer.json` (+ `tokenizer_config.json` for the chat template). Tensors are looked up
//! by their GGUF names and translated; weights are memory-mapped, not copied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::chat::ChatTemplate;
use crate::config::{Activation, Arch, ModelConfig, RopeStyle};
use crate::error::{ModelError, Result};
use crate::model::{Model, TensorSource};
use crate::quant::GgmlType;
use crate::tokenizer::Tokenizer;
use crate::weights::{Bytes, QMatrix};

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::InvalidHfDir(msg.into())
}

/// The `config.json` fields we use (HF configs carry many more; they are ignored).
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    model_type: String,
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    rms_norm_eps: Option<f32>,
    #[serde(default)]
    rope_theta: Option<f32>,
    #[serde(default)]
    rope_local_base_freq: Option<f32>,
    #[serde(default)]
    rope_scaling: Option<Value>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    sliding_window_pattern: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    query_pre_attn_scalar: Option<f32>,
    #[serde(default)]
    final_logit_softcapping: Option<f32>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
}

fn model_config(raw: &RawConfig) -> Result<ModelConfig> {
    let kind = if raw.model_type.is_empty() { raw.architectures.first().cloned().unwrap_or_default() } else { raw.model_type.clone() };
    let arch = match kind.as_str() {
        "llama" | "mistral" | "LlamaForCausalLM" | "MistralForCausalLM" => Arch::Llama,
        "qwen2" | "Qwen2ForCausalLM" => Arch::Qwen2,
        "gemma3_text" | "gemma3" | "Gemma3ForCausalLM" => Arch::Gemma3,
        other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
    };
    if let Some(rs) = &raw.rope_scaling {
        let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Value::as_str).unwrap_or("default");
        if !rs.is_null() && kind != "default" {
            return Err(bad(format!("config.json: rope_scaling type {kind:?} is not supported yet")));
        }
    }
    let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1));
    let gemma = arch == Arch::Gemma3;
    let sliding_window = if gemma { raw.sliding_window } else { None };
    let layer_is_sliding = match (&raw.layer_types, sliding_window) {
        (Some(types), Some(_)) => types.iter().map(|t| t == "sliding_attention").collect(),
        (None, Some(_)) => {
            let p = raw.sliding_window_pattern.unwrap_or(6).max(1);
            (0..raw.num_hidden_layers).map(|i| (i + 1) % p != 0).collect()
        }
        _ => vec![false; raw.num_hidden_layers],
    };
    let rope_theta = raw.rope_theta.unwrap_or(10000.0);
    ModelConfig {
        arch,
        n_layers: raw.num_hidden_layers,
        d_model: raw.hidden_size,
        ffn_dim: raw.intermediate_size,
        n_heads: raw.num_attention_heads,
        n_kv_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
        head_dim,
        vocab_size: raw.vocab_size,
        context_length: raw.max_position_embeddings.unwrap_or(2048),
        rms_eps: raw.rms_norm_eps.unwrap_or(1e-6),
        rope_theta,
        rope_theta_local: if gemma { raw.rope_local_base_freq.unwrap_or(10000.0) } else { rope_theta },
        rope_style: RopeStyle::HalfSplit,
        rope_freq_scale: 1.0,
        sliding_window,
        layer_is_sliding,
        embed_scale: if gemma { (raw.hidden_size as f32).sqrt() } else { 1.0 },
        attn_scale: 1.0 / raw.query_pre_attn_scalar.unwrap_or(head_dim as f32).sqrt(),
        activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
        final_logit_softcap: raw.final_logit_softcapping.filter(|v| *v > 0.0),
    }
    .validate()
}

struct Entry {
    ty: GgmlType,
    shape: Vec<usize>,
    file: usize,
    offset: usize,
}

pub(crate) struct SafetensorsSource {
    files: Vec<Bytes>,
    tensors: HashMap<String, Entry>,
    /// Tensors of types we do not read, with their type.
    unsupported: HashMap<String, String>,
    /// Gemma stores RMSNorm weights as offsets from 1.
    norm_plus_one: bool,
    prefix: String,
}

impl SafetensorsSource {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(bad(format!("{}: no *.safetensors files", dir.display())));
        }
        let mut files: Vec<Bytes> = Vec::new();
        let mut tensors = HashMap::new();
        let mut unsupported = HashMap::new();
        for path in paths {
            let io = |source| ModelError::Io { path: path.clone(), source };
            let file = std::fs::File::open(&path).map_err(io)?;
            // SAFETY: read-only map of a file we do not modify (same contract as the GGUF map).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map[..])
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                let ty = match info.dtype {
                    safetensors::Dtype::F32 => GgmlType::F32,
                    safetensors::Dtype::F16 => GgmlType::F16,
                    safetensors::Dtype::BF16 => GgmlType::BF16,
                    // Integer buffers (BERT's position_ids) are not weights: refused only if asked for.
                    other => {
                        unsupported.insert(name, format!("{other:?}"));
                        continue;
                    }
                };
                let (start, end) = info.data_offsets;
                let n: usize = info.shape.iter().product();
                if end - start != n * ty.block_bytes() || base + end > map.len() {
                    return Err(bad(format!("{}: tensor {name} has inconsistent offsets", path.display())));
                }
                tensors.insert(name, Entry { ty, shape: info.shape.clone(), file: files.len(), offset: base + start });
            }
            files.push(Arc::new(map));
        }
        let prefix = ["model.", "language_model.model.", "model.language_model."]
            .into_iter()
            .find(|p| tensors.contains_key(&format!("{p}embed_tokens.weight")))
            .unwrap_or("model.")
            .to_string();
        Ok(Self { files, tensors, unsupported, norm_plus_one: false, prefix })
    }

    /// The HF name of a GGUF-named tensor.
    fn hf_name(&self, gguf: &str) -> String {
        let p = &self.prefix;
        match gguf {
            "token_embd.weight" => return format!("{p}embed_tokens.weight"),
            "output_norm.weight" => return format!("{p}norm.weight"),
            "output.weight" => return "lm_head.weight".into(),
            _ => {}
        }
        let Some(rest) = gguf.strip_prefix("blk.") else { return gguf.to_string() };
        let Some((layer, t)) = rest.split_once('.') else { return gguf.to_string() };
        let mapped = match t {
            "attn_norm.weight" => "input_layernorm.weight",
            "attn_q.weight" => "self_attn.q_proj.weight",
            "attn_k.weight" => "self_attn.k_proj.weight",
            "attn_v.weight" => "self_attn.v_proj.weight",
            "attn_q.bias" => "self_attn.q_proj.bias",
            "attn_k.bias" => "self_attn.k_proj.bias",
            "attn_v.bias" => "self_attn.v_proj.bias",
            "attn_output.weight" => "self_attn.o_proj.weight",
            "attn_q_norm.weight" => "self_attn.q_norm.weight",
            "attn_k_norm.weight" => "self_attn.k_norm.weight",
            "post_attention_norm.weight" => "post_attention_layernorm.weight",
            "ffn_norm.weight" if self.norm_plus_one => "pre_feedforward_layernorm.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            "post_ffw_norm.weight" => "post_feedforward_layernorm.weight",
            "ffn_gate.weight" => "mlp.gate_proj.weight",
            "ffn_up.weight" => "mlp.up_proj.weight",
            "ffn_down.weight" => "mlp.down_proj.weight",
            other => other,
        };
        format!("{p}layers.{layer}.{mapped}")
    }

    fn entry(&self, gguf: &str) -> Result<(&Entry, String)> {
        let name = self.hf_name(gguf);
        if let Some(ty) = self.unsupported.get(&name) {
            return Err(ModelError::UnsupportedTensorType { type_name: ty.clone(), tensor: name });
        }
        self.tensors
            .get(&name)
            .map(|e| (e, name.clone()))
            .ok_or_else(|| ModelError::MissingOrInvalid(format!("tensor {name}")))
    }
}

impl TensorSource for SafetensorsSource {
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(&self.hf_name(name))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
        let (e, hf) = self.entry(name)?;
        if e.shape != [rows, cols] {
            return Err(ModelError::MissingOrInvalid(format!("tensor {hf}: shape {:?}, expected [{rows}, {cols}]", e.shape)));
        }
        QMatrix::new(e.ty, rows, cols, self.files[e.file].clone(), e.offset, &hf)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (e, hf) = self.entry(name)?;
        if e.shape.iter().product::<usize>() != len {
            return Err(ModelError::MissingOrInvalid(format!("tensor {hf}: shape {:?}, expected [{len}]", e.shape)));
        }
        let bytes = &(*self.files[e.file]).as_ref()[e.offset..e.offset + len * e.ty.block_bytes()];
        let mut out = vec![0f32; len];
        crate::quant::dequantize(e.ty, bytes, &mut out);
        if self.norm_plus_one && name.contains("norm") {
            out.iter_mut().for_each(|v| *v += 1.0);
        }
        Ok(out)
    }
}

pub(crate) fn load_dir(dir: &Path, threads: usize) -> Result<(Model, Tokenizer, Option<ChatTemplate>)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|source| ModelError::Io { path: cfg_path.clone(), source })?;
    let cfg_json: Value = serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", cfg_path.display())))?;
    let raw: RawConfig =
        serde_json::from_value(cfg_json.clone()).or_else(|e| {
            // Multimodal configs keep the text model's fields in `text_config`.
            match cfg_json.get("text_config") {
                Some(t) => serde_json::from_value(t.clone()),
                None => Err(e),
            }
        })
        .map_err(|e| bad(format!("{}: {e}", cfg_path.display())))?;
    let cfg = model_config(&raw)?;
    let mut src = SafetensorsSource::open(dir)?;
    src.norm_plus_one = cfg.arch == Arch::Gemma3;
    let (tokenizer, template_src) = crate::tokenizer::hf::load(dir, &cfg_json)?;
    let template = template_src.map(|t| ChatTemplate::new(&t, &tokenizer)).transpose()?;
    let tie = raw.tie_word_embeddings.unwrap_or(false);
    if !tie && !src.has("output.weight") {
        return Err(bad("lm_head.weight is missing and tie_word_embeddings is false"));
    }
    let model = Model::load(cfg, &src, threads)?;
    Ok((model, tokenizer, template))
}
