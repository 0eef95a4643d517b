//! all-MiniLM-L6-v2 against sentence-transformers (golden file made by
//! scripts/golden/embeddings.sh): the same token ids, and sentence vectors with cosine ≥ 0.9999,
//! whether each text runs alone or all of them share one flattened forward.

use serde_json::Value;

use crate::common::minilm;

fn golden() -> Vec<(String, Vec<u32>, Vec<f32>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/minilm_embeddings.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let ids = t["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            let emb = t["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (t["text"].as_str().unwrap().to_string(), ids, emb)
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn token_ids_match_the_reference_tokenizer() {
    let m = minilm();
    let g = golden();
    assert!(g.len() >= 50);
    for (text, ids, _) in &g {
        assert_eq!(&m.tokenize(text).unwrap(), ids, "{text:?}");
    }
}

#[test]
fn sentence_vectors_match_sentence_transformers() {
    let m = minilm();
    let g = golden();
    let ids: Vec<Vec<u32>> = g.iter().map(|(_, i, _)| i.clone()).collect();
    let batched = m.embed(&ids).unwrap();
    let mut worst = (1.0f64, String::new());
    for (k, (text, id, want)) in g.iter().enumerate() {
        let alone = m.embed(std::slice::from_ref(id)).unwrap().remove(0);
        for (how, got) in [("alone", &alone), ("batched", &batched[k])] {
            assert_eq!(got.len(), 384);
            let c = cosine(got, want);
            assert!(c >= 0.9999, "{how} {text:?}: cosine {c}");
            if c < worst.0 {
                worst = (c, format!("{how} {text:?}"));
            }
        }
        let norm: f32 = alone.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "L2-normalised: {norm}");
    }
    eprintln!("min cosine vs sentence-transformers over {} texts: 1 - {:.2e} ({})", g.len(), 1.0 - worst.0, worst.1);
}

#[test]
fn inputs_beyond_the_positions_are_refused_not_cut() {
    let m = minilm();
    let mut ids = m.tokenize(&"word ".repeat(600)).unwrap();
    assert!(ids.len() > m.max_tokens());
    assert!(m.embed(std::slice::from_ref(&ids)).is_err());
    m.truncate(&mut ids);
    assert_eq!((ids.len(), ids[0], *ids.last().unwrap()), (512, 101, 102));
    assert_eq!(m.embed(&[ids]).unwrap()[0].len(), 384);
}
