//! The real embedding model for tests (this crate's and those built on it): all-MiniLM-L6-v2
//! from the models folder (`SLUICE_MODELS_DIR`, default `<repo>/models`; `make test` fetches it).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::embed::{Embedders, EmbeddingService};

/// A started service over all-MiniLM-L6-v2 packing forwards of up to `max_batch_tokens`.
///
/// # Panics
/// When the model is missing or does not load: a test without its model must fail loudly.
#[expect(clippy::panic, reason = "test support: a missing model must fail the test loudly")]
pub fn minilm(max_batch_tokens: usize) -> EmbeddingService {
    let dir = std::env::var_os("SLUICE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
        .join("all-MiniLM-L6-v2");
    let model = sluice_model::EmbeddingModel::load(&dir, 2)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-models.sh minilm)", dir.display()));
    EmbeddingService::start(model, 64, max_batch_tokens).unwrap_or_else(|e| panic!("{e}"))
}

/// One process-wide MiniLM service, served as `minilm`.
pub fn embedders() -> Embedders {
    static E: OnceLock<Embedders> = OnceLock::new();
    E.get_or_init(|| Arc::new([("minilm".to_string(), minilm(crate::embed::DEFAULT_MAX_BATCH_TOKENS))].into_iter().collect())).clone()
}
