//! Opening a model from disk: a GGUF file or a Hugging Face directory. Produces the model, its
//! tokenizer and its chat template, with everything validated up front.

use std::path::{Path, PathBuf};

use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::model::{Model, TensorSource};
use crate::tokenizer::Tokenizer;
use crate::weights::QMatrix;

/// A model with everything needed to serve it.
pub struct LoadedModel {
    /// Weights and forward pass.
    pub model: Model,
    /// Text ↔ token ids.
    pub tokenizer: Tokenizer,
    /// The model's own chat template, if it has one.
    pub chat_template: Option<ChatTemplate>,
    /// Where it came from.
    pub source: PathBuf,
    /// A short name for `/v1/models` (file stem or directory name).
    pub name: String,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel").field("name", &self.name).field("source", &self.source).finish()
    }
}

/// Opens a GGUF file or a Hugging Face directory (`config.json` + `*.safetensors` + `tokenizer.json`).
pub fn load(path: &Path, threads: usize) -> Result<LoadedModel> {
    let meta = std::fs::metadata(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    if meta.is_dir() {
        let (model, tokenizer, chat_template) = crate::hf::load_dir(path, threads)?;
        return Ok(LoadedModel { model, tokenizer, chat_template, source: path.to_path_buf(), name });
    }
    let file = GgufFile::open(path)?;
    let cfg = ModelConfig::from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let chat_template = match file.get_str("tokenizer.chat_template") {
        Some(src) => Some(ChatTemplate::new(src, &tokenizer)?),
        None => None,
    };
    let model = Model::load(cfg, &GgufSource(&file), threads)?;
    Ok(LoadedModel { model, tokenizer, chat_template, source: path.to_path_buf(), name })
}

struct GgufSource<'a>(&'a GgufFile);

impl GgufSource<'_> {
    fn info(&self, name: &str) -> Result<&crate::gguf::TensorInfo> {
        self.0.tensors.get(name).ok_or_else(|| ModelError::MissingOrInvalid(format!("tensor {name}")))
    }
}

impl TensorSource for GgufSource<'_> {
    fn has(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name)
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
        let t = self.info(name)?;
        if t.dims.len() != 2 || t.dims[0] != cols as u64 || t.dims[1] != rows as u64 {
            return Err(ModelError::MissingOrInvalid(format!(
                "tensor {name}: shape {:?}, expected [{cols}, {rows}]",
                t.dims
            )));
        }
        QMatrix::new(t.ggml_type, rows, cols, self.0.data(), t.offset, name)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.info(name)?;
        if t.n_elements() != len as u64 {
            return Err(ModelError::MissingOrInvalid(format!(
                "tensor {name}: {} elements, expected {len}",
                t.n_elements()
            )));
        }
        let mut out = vec![0f32; len];
        crate::quant::dequantize(t.ggml_type, self.0.tensor_bytes(t), &mut out);
        Ok(out)
    }
}
