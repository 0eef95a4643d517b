//! Arbitrary text through the real tokenizers (SmolLM2's byte-level BPE, Gemma 3's
//! SentencePiece), with and without special-token parsing, and arbitrary ids back to text.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sluice_model::Tokenizer;
use sluice_model::gguf::GgufFile;

fn load(name: &str) -> Option<Tokenizer> {
    let dir = std::env::var("SLUICE_MODELS_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../models").into());
    let f = GgufFile::open(std::path::Path::new(&dir).join(name).as_path()).ok()?;
    Tokenizer::from_gguf(&f).ok()
}

static TOKENIZERS: LazyLock<Vec<Tokenizer>> = LazyLock::new(|| {
    let t: Vec<Tokenizer> = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"].iter().filter_map(|n| load(n)).collect();
    assert!(!t.is_empty(), "no model files: run scripts/fetch-models.sh");
    t
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for t in TOKENIZERS.iter() {
        for special in [false, true] {
            let ids = t.encode(&text, special);
            let _ = t.decode(&ids, special);
        }
        let ids: Vec<u32> = data.chunks(4).map(|c| c.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b)) % (t.vocab_size() as u32 + 8)).collect();
        let _ = t.decode(&ids, true);
        let mut d = sluice_model::StreamDecoder::default();
        for &id in &ids {
            let _ = d.push(t.token_bytes(id, false));
        }
        let _ = d.finish();
    }
});
