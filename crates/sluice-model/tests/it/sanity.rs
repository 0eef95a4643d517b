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
