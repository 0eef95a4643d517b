use std::path::PathBuf;
use std::sync::OnceLock;

use sluice_model::LoadedModel;

pub fn models_dir() -> PathBuf {
    match std::env::var_os("SLUICE_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"),
    }
}

pub fn model_path(file: &str) -> PathBuf {
    let p = models_dir().join(file);
    assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh (make test does)", p.display());
    p
}

pub fn smollm2() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| sluice_model::load(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf"), 2).unwrap())
}

pub fn gemma3() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| sluice_model::load(&model_path("gemma-3-270m-q4_k_m.gguf"), 2).unwrap())
}

pub fn minilm() -> &'static sluice_model::EmbeddingModel {
    static M: OnceLock<sluice_model::EmbeddingModel> = OnceLock::new();
    M.get_or_init(|| sluice_model::EmbeddingModel::load(&model_path("all-MiniLM-L6-v2"), 2).unwrap())
}

/// Greedy continuation of `prompt_ids` for `n` tokens.
pub fn greedy(m: &LoadedModel, prompt_ids: &[u32], n: usize) -> Vec<u32> {
    let mut cache = sluice_model::KvCache::new(&m.model.cfg, prompt_ids.len() + n);
    let mut logits = m.model.forward(prompt_ids, &mut cache, sluice_model::Logits::Last).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = argmax(&logits);
        out.push(next);
        logits = m.model.forward(&[next], &mut cache, sluice_model::Logits::Last).unwrap();
    }
    out
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}
