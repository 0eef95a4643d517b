//! Arbitrary conversations through SmolLM2's own chat template (minijinja): errors are
//! errors, never panics.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sluice_model::gguf::GgufFile;
use sluice_model::{ChatMessage, ChatTemplate, Tokenizer};

static TEMPLATE: LazyLock<ChatTemplate> = LazyLock::new(|| {
    let dir = std::env::var("SLUICE_MODELS_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../models").into());
    let f = GgufFile::open(std::path::Path::new(&dir).join("SmolLM2-135M-Instruct.Q4_1.gguf").as_path()).expect("model file");
    let tok = Tokenizer::from_gguf(&f).expect("tokenizer");
    let src = f.get_str("tokenizer.chat_template").expect("template").to_string();
    ChatTemplate::new(&src, &tok).expect("template compiles")
});

const ROLES: [&str; 6] = ["system", "user", "assistant", "tool", "", "{{ raise_exception('x') }}"];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let messages: Vec<ChatMessage> = text
        .split('\u{1}')
        .enumerate()
        .map(|(i, part)| ChatMessage { role: ROLES[(i + part.len()) % ROLES.len()].to_string(), content: part.to_string() })
        .collect();
    for add in [false, true] {
        let _ = TEMPLATE.render(&messages, add);
    }
});
