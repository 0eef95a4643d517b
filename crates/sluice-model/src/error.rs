//! Errors of the model crate: loading weights, tokenizing, templating, running a forward pass.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A GGUF file is malformed (truncated, bad magic, out-of-range offsets, ...).
    #[error("invalid GGUF file: {0}")]
    InvalidGguf(String),
    /// A safetensors / Hugging Face directory is malformed.
    #[error("invalid model directory: {0}")]
    InvalidHfDir(String),
    /// A tensor type the kernels do not implement.
    #[error("unsupported tensor type {type_name} in tensor {tensor}")]
    UnsupportedTensorType {
        /// The ggml type name (or id).
        type_name: String,
        /// The tensor that uses it.
        tensor: String,
    },
    /// The architecture named in the file is not one we can run.
    #[error("unsupported architecture {0:?} (supported: llama, mistral, qwen2, gemma3)")]
    UnsupportedArchitecture(String),
    /// A required metadata key or tensor is missing or has the wrong shape.
    #[error("model file is missing or has an invalid {0}")]
    MissingOrInvalid(String),
    /// The tokenizer could not be built or used.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The chat template could not be compiled or rendered.
    #[error("chat template error: {0}")]
    Template(String),
    /// A forward pass was asked for something impossible (e.g. past the context window).
    #[error("invalid forward request: {0}")]
    InvalidInput(String),
}

impl ModelError {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::InvalidGguf(_) => "invalid_gguf",
            Self::InvalidHfDir(_) => "invalid_hf_dir",
            Self::UnsupportedTensorType { .. } => "unsupported_tensor_type",
            Self::UnsupportedArchitecture(_) => "unsupported_architecture",
            Self::MissingOrInvalid(_) => "missing_or_invalid",
            Self::Tokenizer(_) => "tokenizer",
            Self::Template(_) => "template",
            Self::InvalidInput(_) => "invalid_input",
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
