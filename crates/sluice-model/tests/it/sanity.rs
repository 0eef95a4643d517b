use crate::common::*;

#[test]
fn smollm2_knows_the_capital_of_france() {
    let m = smollm2();
    let ids = m.tokenizer.encode_prompt("The capital of France is", false);
    let out = greedy(m, &ids, 12);
    let text = m.tokenizer.decode(&out, false);
    assert!(text.starts_with(" Paris"), "{ids:?} -> {text:?}");
}

#[test]
fn gemma3_knows_the_capital_of_france() {
    let m = gemma3();
    let ids = m.tokenizer.encode_prompt("Paris is the capital city of", false);
    let out = greedy(m, &ids, 6);
    let text = m.tokenizer.decode(&out, false);
    assert!(text.starts_with(" France"), "{ids:?} -> {text:?}");
}

#[test]
fn a_truncated_model_file_is_a_clear_error() {
    let src = model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&src).unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for cut in [10usize, 4096, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.join("cut.gguf");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = sluice_model::load(&p, 1).unwrap_err().to_string();
        assert!(e.contains("invalid GGUF") && (e.contains("truncated") || e.contains("exceeds")), "cut {cut}: {e}");
    }
    let p = dir.join("not.gguf");
    std::fs::write(&p, b"definitely not a model").unwrap();
    assert!(sluice_model::load(&p, 1).unwrap_err().to_string().contains("magic"));
    assert!(sluice_model::load(&dir.join("missing.gguf"), 1).unwrap_err().to_string().contains("cannot read"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Random strings over a mix of scripts, emoji, whitespace, digits and special-token text.
fn random_strings(count: usize) -> Vec<String> {
    let alphabet: Vec<char> = "aZé ß\n\t  0123456789.,;!?'\"(){}<>|_-—…€中文日本語한국어🙂👍🏽🇫🇷\u{200b}\u{301}ÿ\r"
        .chars()
        .collect();
    let pieces = ["<|im_start|>", "<|im_end|>", "<start_of_turn>", "<bos>", "  ", "\n\n", "ing", " the"];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count)
        .map(|_| {
            let len = (next() % 40) as usize;
            (0..len)
                .map(|_| {
                    let r = next();
                    if r % 10 == 0 {
                        pieces[(r / 10) as usize % pieces.len()].to_string()
                    } else {
                        alphabet[(r / 10) as usize % alphabet.len()].to_string()
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn decode_inverts_encode_on_random_text() {
    for m in [smollm2(), gemma3()] {
        for s in random_strings(2000) {
            for special in [true, false] {
                let ids = m.tokenizer.encode(&s, special);
                assert_eq!(m.tokenizer.decode(&ids, true), s, "{s:?} (special parsing {special})");
            }
        }
    }
}
