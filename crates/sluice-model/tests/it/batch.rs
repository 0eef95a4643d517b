//! Batched forward passes over paged KV memory give exactly (bit for bit) the logits of each
//! sequence run alone: mixed prefill chunks and decodes in one step, blocks scattered.

use sluice_model::{BatchSeq, KvCache, LoadedModel, Logits, PagedKv};

use crate::common::*;

fn alone(m: &LoadedModel, prompt: &[u32], extra: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new(&m.model.cfg, prompt.len() + extra.len());
    let mut out = vec![m.model.forward(prompt, &mut cache, Logits::Last).unwrap()];
    for &t in extra {
        out.push(m.model.forward(&[t], &mut cache, Logits::Last).unwrap());
    }
    out
}

fn check(m: &LoadedModel) {
    let prompts: Vec<Vec<u32>> = [
        "The capital of France is",
        "Once upon a time, in a land far away, there lived a",
        "def add(a, b):\n    return",
    ]
    .iter()
    .map(|p| m.tokenizer.encode_prompt(p, false))
    .collect();
    let extra = [5u32, 17, 42, 7];
    let want: Vec<Vec<Vec<f32>>> = prompts.iter().map(|p| alone(m, p, &extra)).collect();
    let bs = 4;
    let mut kv = PagedKv::new(&m.model.cfg, 64, bs);
    // Interleaved, non-contiguous block tables.
    let tables: Vec<Vec<u32>> = (0..3u32).map(|s| (0..16u32).map(|i| 63 - (i * 3 + s)).collect()).collect();
    // Step 1: seq 0 whole prompt, seq 1 first half of its prompt (no logits).
    // Step 2: seq 0 decodes, seq 1 rest of prompt, seq 2 whole prompt.
    // Then everyone decodes together.
    let half = prompts[1].len() / 2;
    let s1 = [
        BatchSeq { tokens: &prompts[0], start_pos: 0, block_table: &tables[0], prompt_len: prompts[0].len(), logits: Some(Logits::Last) },
        BatchSeq { tokens: &prompts[1][..half], start_pos: 0, block_table: &tables[1], prompt_len: prompts[1].len(), logits: None },
    ];
    let r1 = m.model.forward_batch(&s1, &mut kv).unwrap();
    assert_eq!(r1[0], want[0][0]);
    assert!(r1[1].is_empty());
    let s2 = [
        BatchSeq { tokens: &extra[..1], start_pos: prompts[0].len(), block_table: &tables[0], prompt_len: prompts[0].len(), logits: Some(Logits::Last) },
        BatchSeq { tokens: &prompts[1][half..], start_pos: half, block_table: &tables[1], prompt_len: prompts[1].len(), logits: Some(Logits::Last) },
        BatchSeq { tokens: &prompts[2], start_pos: 0, block_table: &tables[2], prompt_len: prompts[2].len(), logits: Some(Logits::Last) },
    ];
    let r2 = m.model.forward_batch(&s2, &mut kv).unwrap();
    assert_eq!(r2[0], want[0][1]);
    assert_eq!(r2[1], want[1][0]);
    assert_eq!(r2[2], want[2][0]);
    // Seq 0 is one token ahead of the others.
    let mut pos = [prompts[0].len() + 1, prompts[1].len(), prompts[2].len()];
    let mut done = [2usize, 1, 1];
    // These steps go through one logits buffer kept across steps, as the engine keeps one; it
    // starts oversized and full of NaN, which must neither leak into nor pad the results.
    let vocab = m.model.cfg.vocab_size;
    let mut buf = vec![f32::NAN; 10 * vocab];
    for _ in 0..3 {
        // The token fed now is the one whose logits come next.
        let toks: Vec<[u32; 1]> = (0..3).map(|s| [extra[done[s] - 1]]).collect();
        let batch: Vec<BatchSeq<'_>> = (0..3)
            .filter(|&s| done[s] < extra.len() + 1)
            .map(|s| BatchSeq {
                tokens: &toks[s],
                start_pos: pos[s],
                block_table: &tables[s],
                prompt_len: prompts[s].len(),
                logits: Some(Logits::Last),
            })
            .collect();
        let active: Vec<usize> = (0..3).filter(|&s| done[s] < extra.len() + 1).collect();
        let rows = m.model.forward_batch_into(&batch, &mut kv, &mut buf).unwrap();
        assert_eq!(rows, vec![1; active.len()]);
        assert_eq!(buf.len(), active.len() * vocab);
        for (i, &s) in active.iter().enumerate() {
            assert_eq!(buf[i * vocab..(i + 1) * vocab], want[s][done[s]][..], "sequence {s} step {}", done[s]);
            pos[s] += 1;
            done[s] += 1;
        }
    }
}

#[test]
fn batched_steps_equal_single_sequence_runs_bit_for_bit() {
    check(smollm2());
    check(gemma3());
}

#[test]
fn bad_block_tables_are_errors() {
    let m = smollm2();
    let mut kv = PagedKv::new(&m.model.cfg, 4, 4);
    let too_short = [BatchSeq { tokens: &[1, 2, 3, 4, 5], start_pos: 0, block_table: &[0], prompt_len: 5, logits: None }];
    assert!(m.model.forward_batch(&too_short, &mut kv).is_err());
    let out_of_pool = [BatchSeq { tokens: &[1], start_pos: 0, block_table: &[9], prompt_len: 1, logits: None }];
    assert!(m.model.forward_batch(&out_of_pool, &mut kv).is_err());
}
