//! Models: weights (GGUF, safetensors), tokenizers, chat templates, forward passes per
//! architecture family, and the CPU kernels they run on.

mod attention_kernels;
pub mod bert;
pub mod cache;
pub mod chat;
pub mod config;
pub mod embedder;
pub mod error;
pub mod gguf;
mod hf;
pub mod layers;
pub mod loader;
mod mem;
pub mod phases;
pub mod model;
pub mod quant;
pub mod sgemm;
pub mod tokenizer;
mod vmath;
pub mod weights;

pub use bert::BertEncoder;
pub use cache::{KvCache, KvDtype, KvView, PagedKv};
pub use chat::{ChatMessage, ChatTemplate};
pub use config::{Arch, ModelConfig};
pub use embedder::EmbeddingModel;
pub use error::{ModelError, Result};
pub use loader::{LoadedModel, load};
pub use model::{BatchSeq, Logits, Model};
pub use tokenizer::{StreamDecoder, Tokenizer};
