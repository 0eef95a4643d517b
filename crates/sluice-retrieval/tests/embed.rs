//! The embedding service against the real all-MiniLM-L6-v2: many inputs become few forwards,
//! concurrent callers share them, answers come back in order and equal one-at-a-time results.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code may unwrap")]

use std::sync::atomic::Ordering;

use sluice_retrieval::RetrievalError;
use sluice_retrieval::testing::minilm;

fn chunks(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("Chunk {i}: the ledger settles reservation number {} after the stream ends.", i * 7)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_chunks_take_a_few_large_forwards() {
    let svc = minilm(8192);
    let texts = chunks(1000);
    let out = svc.embed_texts(&texts, false).await.unwrap();
    let forwards = svc.stats.forwards.load(Ordering::Relaxed);
    let per_forward = out.tokens as f64 / forwards as f64;
    eprintln!("1000 chunks, {} tokens: {forwards} forwards ({per_forward:.0} tokens each)", out.tokens);
    assert_eq!(out.vectors.len(), 1000);
    assert!(forwards <= (out.tokens as u64).div_ceil(8192) + 1, "{forwards} forwards for {} tokens", out.tokens);
    // Batched answers equal one-at-a-time answers, in order.
    for i in [0usize, 1, 499, 999] {
        let alone = svc.embed_texts(std::slice::from_ref(&texts[i]), false).await.unwrap();
        let cos: f32 = alone.vectors[0].iter().zip(&out.vectors[i]).map(|(a, b)| a * b).sum();
        assert!(cos > 0.99999, "chunk {i}: {cos}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_forwards_and_get_their_own_answers() {
    let svc = minilm(8192);
    let texts = chunks(64);
    let reference = svc.embed_texts(&texts, false).await.unwrap().vectors;
    let before = svc.stats.forwards.load(Ordering::Relaxed);
    let tasks: Vec<_> = texts
        .chunks(4)
        .map(|c| {
            let (svc, c) = (svc.clone(), c.to_vec());
            tokio::spawn(async move { svc.embed_texts(&c, false).await.unwrap().vectors })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.extend(t.await.unwrap());
    }
    let forwards = svc.stats.forwards.load(Ordering::Relaxed) - before;
    eprintln!("16 concurrent requests of 4 chunks: {forwards} forwards");
    assert!(forwards <= 16);
    for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
        let cos: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        assert!(cos > 0.99999, "request order kept: chunk {i}: {cos}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_inputs_are_refused_or_truncated_on_request() {
    let svc = minilm(8192);
    let long = "word ".repeat(700);
    let e = svc.embed_texts(&["ok".into(), long.clone()], false).await.unwrap_err();
    assert!(matches!(e, RetrievalError::InputTooLong { index: 1, max: 512, .. }), "{e}");
    let out = svc.embed_texts(&[long], true).await.unwrap();
    assert_eq!(out.tokens, 512);
    let e = svc.embed_ids(vec![vec![]], false).await.unwrap_err();
    assert!(matches!(e, RetrievalError::Invalid(_)), "{e}");
    // Token ids outside the vocabulary are the model's refusal, not a crash of the thread.
    assert!(svc.embed_ids(vec![vec![101, 999_999, 102]], false).await.is_err());
    assert_eq!(svc.embed_texts(&["still alive".into()], false).await.unwrap().vectors.len(), 1);
}
