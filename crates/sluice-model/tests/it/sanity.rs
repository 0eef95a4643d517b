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
