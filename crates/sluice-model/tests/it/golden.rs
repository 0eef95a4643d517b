//! Numerics and tokenizer checked against llama.cpp's output on the same GGUF files
//! (golden files made by scripts/golden/make_golden.py).

use serde_json::Value;
use sluice_model::{KvCache, KvDtype, LoadedModel, Logits};

use crate::common::*;

fn golden(name: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check_tokenizer(m: &LoadedModel, file: &str) {
    let g = golden(file);
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 300, "only {} tokenizer cases", cases.len());
    let mut failures = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        let got = m.tokenizer.encode(text, true);
        if got != want {
            failures.push(format!("{text:?}: want {want:?} got {got:?}"));
        }
        let back = m.tokenizer.decode(&got, true);
        if back != text {
            failures.push(format!("{text:?}: decode(encode(s)) = {back:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// A greedy divergence at a step where the reference's top-2 logits are closer than this is a
/// near-tie: tolerated, named, never hidden. Any other divergence fails.
const NEAR_TIE: f64 = 0.05;
/// Our kernels reproduce the reference's arithmetic bit for bit (scripts/golden/make_golden.py
/// says which build of llama.cpp); this bound on |Δlogit| only leaves room for a libm whose
/// `sinf`/`cosf`/`tanhf` round one value differently.
const MAX_DELTA: f32 = 1e-3;

/// Compares logits and greedy continuations (teacher-forced: we always feed the reference's
/// token, so one near-tie does not hide the rest); returns the max |Δlogit| over the top-50.
fn check_logits(m: &LoadedModel, file: &str, kv: KvDtype) -> f32 {
    check_logits_of(m, file, kv, usize::MAX, usize::MAX)
}

/// [`check_logits`] over the first `cases` cases and `steps` greedy steps of each.
fn check_logits_of(m: &LoadedModel, file: &str, kv: KvDtype, cases: usize, steps: usize) -> f32 {
    let c = compare(m, file, kv, cases, steps);
    assert!(c.divergences.is_empty(), "{}", c.divergences.join("\n"));
    c.max_delta
}

/// How our logits and teacher-forced greedy choices compare with a golden file's.
struct Comparison {
    /// Max |Δlogit| over the top-50 at the end of each prompt.
    max_delta: f32,
    /// Greedy steps compared.
    steps: usize,
    /// Steps where we chose another token at a near-tie (named on stderr).
    near_ties: usize,
    /// Steps where we chose another token elsewhere.
    divergences: Vec<String>,
}

fn compare(m: &LoadedModel, file: &str, kv: KvDtype, cases: usize, steps: usize) -> Comparison {
    let g = golden(file);
    let mut out = Comparison { max_delta: 0.0, steps: 0, near_ties: 0, divergences: Vec::new() };
    for c in g["cases"].as_array().unwrap().iter().take(cases) {
        let prompt = c["prompt"].as_str().unwrap();
        let prompt_ids = ids(&c["prompt_ids"]);
        assert_eq!(m.tokenizer.encode_prompt(prompt, true), prompt_ids, "prompt tokens of {prompt:?}");
        let want = ids(&c["greedy"]);
        let gaps: Vec<f64> = c["top2_gap"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let mut cache = KvCache::with_dtype(&m.model.cfg, prompt_ids.len() + want.len() + 1, kv);
        let mut logits = m.model.forward(&prompt_ids, &mut cache, Logits::Last).unwrap();
        for (id, l) in ids(&c["top_ids"]).iter().zip(c["top_logits"].as_array().unwrap()) {
            let d = (logits[*id as usize] - l.as_f64().unwrap() as f32).abs();
            out.max_delta = out.max_delta.max(d);
        }
        for (step, &w) in want.iter().enumerate().take(steps) {
            out.steps += 1;
            let got = argmax(&logits);
            if got != w {
                if gaps[step] < NEAR_TIE {
                    out.near_ties += 1;
                    eprintln!(
                        "{file}: near-tie in {prompt:?} at step {step}: reference top-2 gap {:.4}, we chose {got}, reference {w}",
                        gaps[step]
                    );
                } else {
                    out.divergences.push(format!(
                        "{prompt:?} diverges at step {step}: we chose {got}, reference {w} (reference gap {:.4})",
                        gaps[step]
                    ));
                }
            }
            logits = m.model.forward(&[w], &mut cache, Logits::Last).unwrap();
        }
    }
    eprintln!("{file}: max |Δlogit| over top-50 = {:.4}", out.max_delta);
    out
}

#[test]
fn smollm2_tokenizer_matches_llama_cpp() {
    check_tokenizer(smollm2(), "tokenizer_smollm2.json");
}

#[test]
fn gemma3_tokenizer_matches_llama_cpp() {
    check_tokenizer(gemma3(), "tokenizer_gemma3.json");
}

#[test]
fn smollm2_logits_and_greedy_match_llama_cpp() {
    let d = check_logits(smollm2(), "smollm2.json", KvDtype::F32);
    assert!(d < MAX_DELTA, "max |Δlogit| {d}");
}

fn check_exact(m: &LoadedModel, file: &str, kv: KvDtype) {
    let g = golden(file);
    for c in g["exact_cases"].as_array().unwrap() {
        let prompt = ids(&c["prompt_ids"]);
        let mut cache = KvCache::with_dtype(&m.model.cfg, prompt.len(), kv);
        let logits = m.model.forward(&prompt, &mut cache, Logits::Last).unwrap();
        for (id, l) in ids(&c["top_ids"]).iter().zip(c["top_logits"].as_array().unwrap()) {
            let (ours, theirs) = (logits[*id as usize], l.as_f64().unwrap() as f32);
            assert_eq!(ours.to_bits(), theirs.to_bits(), "{file}: prompt {prompt:?} token {id}: {ours} vs {theirs}");
        }
    }
}

#[test]
fn short_prompts_match_llama_cpp_bit_for_bit() {
    check_exact(smollm2(), "smollm2.json", KvDtype::F32);
    check_exact(gemma3(), "gemma3.json", KvDtype::F32);
    check_exact(smollm2(), "smollm2_f16kv.json", KvDtype::F16);
    check_exact(gemma3(), "gemma3_f16kv.json", KvDtype::F16);
}

#[test]
fn gemma3_logits_and_greedy_match_llama_cpp() {
    let d = check_logits(gemma3(), "gemma3.json", KvDtype::F32);
    assert!(d < MAX_DELTA, "max |Δlogit| {d}");
}

#[test]
fn smollm2_with_a_half_precision_kv_cache_matches_llama_cpp() {
    let d = check_logits(smollm2(), "smollm2_f16kv.json", KvDtype::F16);
    assert!(d < MAX_DELTA, "max |Δlogit| {d}");
}

#[test]
fn gemma3_with_a_half_precision_kv_cache_matches_llama_cpp() {
    let d = check_logits(gemma3(), "gemma3_f16kv.json", KvDtype::F16);
    assert!(d < MAX_DELTA, "max |Δlogit| {d}");
}

/// The kernel families this CPU can run: scalar, AVX2 where it has it, and its best.
fn kernel_families() -> Vec<sluice_model::quant::Isa> {
    use sluice_model::quant::{Isa, detect_isa};
    let best = detect_isa();
    [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni].into_iter().filter(|&i| i == Isa::Scalar || (i == Isa::Avx2 && best.has_avx2()) || i == best).collect()
}

/// Every kernel family (scalar, AVX2, and AVX-512 VNNI with repacked weights where the CPU has
/// it) gives the reference's logits bit for bit, with either cache type. Two prompts and eight
/// greedy steps each: the scalar kernels are slow.
#[test]
fn every_kernel_family_matches_llama_cpp_bit_for_bit() {
    let mut m = sluice_model::load(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf"), 2).unwrap();
    for isa in kernel_families() {
        m.model.set_isa(isa).unwrap();
        for (file, kv) in [("smollm2.json", KvDtype::F32), ("smollm2_f16kv.json", KvDtype::F16)] {
            let d = check_logits_of(&m, file, kv, 2, 8);
            assert_eq!(d, 0.0, "{isa:?} kernels, {file}: max |Δlogit| {d}");
        }
    }
}

/// The fast numerics (`--numerics fast`) round differently from the reference, and the 8-bit
/// activation encoding amplifies that (see `Numerics::Fast`), so they cannot meet the token-for-
/// token criterion. What they must meet, on every golden case of both models and cache types,
/// teacher-forced: the reference's greedy token chosen at >= 90% of steps (95.7-98.2% measured),
/// and |Δlogit| < 1.5 (0.67-0.83 measured). A gross kernel error (a dropped term) fails it
/// outright; the arithmetic itself is checked to the bit in the weights module's tests.
#[test]
fn fast_numerics_stay_close_to_llama_cpp() {
    use sluice_model::quant::Numerics;
    let fast = |file: &str| {
        let mut m = sluice_model::load(&model_path(file), 2).unwrap();
        m.model.set_numerics(Numerics::Fast);
        m
    };
    for (model, files) in [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", ["smollm2.json", "smollm2_f16kv.json"]),
        ("gemma-3-270m-q4_k_m.gguf", ["gemma3.json", "gemma3_f16kv.json"]),
    ] {
        let m = fast(model);
        for (file, kv) in files.into_iter().zip([KvDtype::F32, KvDtype::F16]) {
            assert_close(&m, file, kv, "fast numerics", 0.9);
        }
    }
}

/// Teacher-forced against `file`: the reference's greedy token at `min_agree` of the steps or
/// more (near-ties counted against us) and every top-50 logit within 1.5.
fn assert_close(m: &LoadedModel, file: &str, kv: KvDtype, what: &str, min_agree: f64) {
    let c = compare(m, file, kv, usize::MAX, usize::MAX);
    let agree = 1.0 - (c.near_ties + c.divergences.len()) as f64 / c.steps as f64;
    eprintln!("{file} ({what}): reference token at {:.1}% of {} steps; {}", 100.0 * agree, c.steps, c.divergences.join("; "));
    assert!(agree >= min_agree, "{file}: the reference's token at only {:.1}% of steps", 100.0 * agree);
    assert!(c.max_delta < 1.5, "{file}: max |Δlogit| {}", c.max_delta);
}

/// An 8-bit KV cache (`--kv-cache-dtype q8_0`) changes attention's arithmetic, so it cannot
/// meet the token-for-token criterion either. For scale: the reference's own f32 and f16 cache
/// goldens differ by up to 0.91 (SmolLM2) and 0.72 (Gemma 3) in a top-50 logit. Against the
/// half-precision-cache goldens of both models, teacher-forced, we require the reference's
/// greedy token at 93% of steps or more and |Δlogit| < 1.5.
#[test]
fn an_8_bit_kv_cache_stays_close_to_llama_cpp() {
    for (m, file) in [(smollm2(), "smollm2_f16kv.json"), (gemma3(), "gemma3_f16kv.json")] {
        assert_close(m, file, KvDtype::Q8_0, "q8_0 KV cache", 0.93);
    }
}

/// The 8-bit cache's sums are defined by the portable kernels and every SIMD form is bit-equal
/// to them: the whole model's logits agree to the bit across kernel families.
#[test]
fn an_8_bit_kv_cache_gives_the_same_logits_with_every_kernel_family() {
    use sluice_model::quant::Isa;
    let mut m = sluice_model::load(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf"), 2).unwrap();
    let prompt = m.tokenizer.encode_prompt("The quick brown fox jumps over the lazy dog because", true);
    let mut seen: Vec<(Isa, Vec<u32>)> = Vec::new();
    for isa in kernel_families() {
        m.model.set_isa(isa).unwrap();
        let mut cache = KvCache::with_dtype(&m.model.cfg, prompt.len() + 4, KvDtype::Q8_0);
        let mut logits = m.model.forward(&prompt, &mut cache, Logits::Last).unwrap();
        for _ in 0..3 {
            let next = argmax(&logits);
            logits = m.model.forward(&[next], &mut cache, Logits::Last).unwrap();
        }
        seen.push((isa, logits.iter().map(|v| v.to_bits()).collect()));
    }
    for (isa, bits) in &seen[1..] {
        assert!(bits == &seen[0].1, "{isa:?} logits differ from the scalar kernels'");
    }
}
