//! SentencePiece-style BPE over scores (llama / Gemma vocabularies): spaces become `▁`, text
//! starts as one symbol per character, and the adjacent pair whose concatenation is a vocabulary
//! piece with the highest score merges first (leftmost on ties). Characters that are no piece
//! fall back to `<0xXX>` byte tokens.

use std::collections::{BinaryHeap, HashMap};
use std::cmp::Ordering;

use super::{TokenKind, build_lookup};

const SPACE: &str = "\u{2581}";

pub(super) struct Spm {
    lookup: HashMap<Vec<u8>, u32>,
    scores: Vec<f32>,
    byte_token: [u32; 256],
    add_space_prefix: bool,
}

#[derive(PartialEq)]
struct Candidate {
    score: f32,
    left: usize,
    len: usize,
}
impl Eq for Candidate {}
impl Ord for Candidate {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

pub(super) fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Spm {
    pub(super) fn new(
        tokens: &[String],
        kinds: &[TokenKind],
        scores: Vec<f32>,
        add_space_prefix: bool,
    ) -> (Self, Vec<Vec<u8>>) {
        let mut byte_token = [u32::MAX; 256];
        let pieces: Vec<Vec<u8>> = tokens
            .iter()
            .zip(kinds)
            .enumerate()
            .map(|(i, (t, k))| match (k, parse_byte_token(t)) {
                (TokenKind::Byte, Some(b)) => {
                    byte_token[b as usize] = i as u32;
                    vec![b]
                }
                (TokenKind::Normal, _) => t.replace(SPACE, " ").into_bytes(),
                _ => t.as_bytes().to_vec(),
            })
            .collect();
        // Merging works on the escaped (▁) text, so look pieces up by their vocabulary text;
        // only normal pieces take part in merges.
        let escaped: Vec<Vec<u8>> = tokens
            .iter()
            .zip(kinds)
            .map(|(t, k)| if *k == TokenKind::Normal { t.as_bytes().to_vec() } else { Vec::new() })
            .collect();
        let mut lookup = build_lookup(&escaped);
        lookup.remove(&Vec::new());
        (Self { lookup, scores, byte_token, add_space_prefix }, pieces)
    }

    pub(super) fn encode(&self, text: &str, after_special: bool, out: &mut Vec<u32>) {
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && after_special {
            s.push_str(SPACE);
        }
        s.push_str(&text.replace(' ', SPACE));
        let bytes = s.as_bytes();
        // Symbols: byte ranges [start, start+len), linked list over character boundaries.
        let mut start: Vec<usize> = Vec::new();
        let mut len: Vec<usize> = Vec::new();
        for (i, c) in s.char_indices() {
            start.push(i);
            len.push(c.len_utf8());
        }
        let n = start.len();
        if n == 0 {
            return;
        }
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut heap = BinaryHeap::new();
        let try_push = |heap: &mut BinaryHeap<Candidate>, l: usize, r: usize, start: &[usize], len: &[usize]| {
            let piece = &bytes[start[l]..start[r] + len[r]];
            if let Some(&id) = self.lookup.get(piece) {
                heap.push(Candidate { score: self.scores[id as usize], left: l, len: piece.len() });
            }
        };
        for i in 0..n - 1 {
            try_push(&mut heap, i, i + 1, &start, &len);
        }
        while let Some(c) = heap.pop() {
            let r = next[c.left];
            if len[c.left] == 0 || r >= n || len[c.left] + len[r] != c.len {
                continue;
            }
            len[c.left] += len[r];
            len[r] = 0;
            next[c.left] = next[r];
            if next[r] < n {
                prev[next[r]] = c.left;
            }
            let p = prev[c.left];
            if p < n {
                try_push(&mut heap, p, c.left, &start, &len);
            }
            if next[c.left] < n {
                try_push(&mut heap, c.left, next[c.left], &start, &len);
            }
        }
        let mut i = 0;
        while i < n {
            let piece = &bytes[start[i]..start[i] + len[i]];
            match self.lookup.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.iter().map(|&b| self.byte_token[b as usize]).filter(|&t| t != u32::MAX)),
            }
            i = next[i];
        }
    }
}
