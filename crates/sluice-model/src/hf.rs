//! Hugging Face directories: `config.json` + `*.safetensors` + `tokenizer.json`.

use std::path::Path;

use crate::chat::ChatTemplate;
use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

pub(crate) fn load_dir(dir: &Path, _threads: usize) -> Result<(Model, Tokenizer, Option<ChatTemplate>)> {
    Err(ModelError::InvalidHfDir(format!(
        "{}: loading Hugging Face directories is not supported yet; pass a GGUF file",
        dir.display()
    )))
}
