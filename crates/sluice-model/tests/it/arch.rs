//! Architecture wiring on tiny random-weight models (F32, so no activation quantization):
//! our forward pass against a direct f64 transcription of each architecture's equations.
//! Covers what the real models do not: Qwen2's q/k/v biases and half-split rope, untied
//! output heads, grouped-query attention with several KV heads.

use sluice_model::gguf::GgufWriter;
use sluice_model::quant::GgmlType;
use sluice_model::{KvCache, Logits};

const D: usize = 64;
const HEADS: usize = 4;
const KV: usize = 2;
const HD: usize = 16;
const FF: usize = 96;
const VOCAB: usize = 32;
const LAYERS: usize = 2;
const THETA: f64 = 10000.0;
const EPS: f64 = 1e-5;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.next() * scale) as f32).collect()
    }
}

struct Weights {
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
}

impl Weights {
    fn get(&self, name: &str) -> &[f32] {
        &self.tensors.iter().find(|t| t.0 == name).unwrap().2
    }
}

fn make(arch: &str, biases: bool) -> Weights {
    let mut r = Rng(0x1234_5678 ^ arch.len() as u64);
    let mut t = Vec::new();
    let mut add = |name: String, dims: Vec<u64>, v: Vec<f32>| t.push((name, dims, v));
    add("token_embd.weight".into(), vec![D as u64, VOCAB as u64], r.vec(D * VOCAB, 2.0));
    add("output.weight".into(), vec![D as u64, VOCAB as u64], r.vec(D * VOCAB, 0.5));
    add("output_norm.weight".into(), vec![D as u64], r.vec(D, 0.4).iter().map(|v| v + 1.0).collect());
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}");
        add(n("attn_norm.weight"), vec![D as u64], r.vec(D, 0.4).iter().map(|v| v + 1.0).collect());
        add(n("ffn_norm.weight"), vec![D as u64], r.vec(D, 0.4).iter().map(|v| v + 1.0).collect());
        add(n("attn_q.weight"), vec![D as u64, (HEADS * HD) as u64], r.vec(D * HEADS * HD, 0.3));
        add(n("attn_k.weight"), vec![D as u64, (KV * HD) as u64], r.vec(D * KV * HD, 0.3));
        add(n("attn_v.weight"), vec![D as u64, (KV * HD) as u64], r.vec(D * KV * HD, 0.3));
        add(n("attn_output.weight"), vec![(HEADS * HD) as u64, D as u64], r.vec(D * HEADS * HD, 0.3));
        add(n("ffn_gate.weight"), vec![D as u64, FF as u64], r.vec(D * FF, 0.3));
        add(n("ffn_up.weight"), vec![D as u64, FF as u64], r.vec(D * FF, 0.3));
        add(n("ffn_down.weight"), vec![FF as u64, D as u64], r.vec(D * FF, 0.3));
        if biases {
            add(n("attn_q.bias"), vec![(HEADS * HD) as u64], r.vec(HEADS * HD, 0.5));
            add(n("attn_k.bias"), vec![(KV * HD) as u64], r.vec(KV * HD, 0.5));
            add(n("attn_v.bias"), vec![(KV * HD) as u64], r.vec(KV * HD, 0.5));
        }
    }
    Weights { tensors: t }
}

fn write_gguf(arch: &str, w: &Weights) -> std::path::PathBuf {
    let mut g = GgufWriter::default();
    let k = |s: &str| format!("{arch}.{s}");
    g.string("general.architecture", arch)
        .u32(&k("block_count"), LAYERS as u32)
        .u32(&k("embedding_length"), D as u32)
        .u32(&k("feed_forward_length"), FF as u32)
        .u32(&k("attention.head_count"), HEADS as u32)
        .u32(&k("attention.head_count_kv"), KV as u32)
        .u32(&k("context_length"), 64)
        .f32(&k("attention.layer_norm_rms_epsilon"), EPS as f32)
        .f32(&k("rope.freq_base"), THETA as f32)
        .string("tokenizer.ggml.model", "gpt2");
    let toks: Vec<String> = (0..VOCAB).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
    g.strings("tokenizer.ggml.tokens", &refs).strings("tokenizer.ggml.merges", &["t 1"]);
    for (name, dims, v) in &w.tensors {
        g.tensor(name, dims, GgmlType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect());
    }
    let p = std::env::temp_dir().join(format!("sluice-arch-{arch}-{}.gguf", std::process::id()));
    std::fs::write(&p, g.build()).unwrap();
    p
}

/// `out = W x` for a row-major `[rows × cols]` matrix.
fn mv(w: &[f32], x: &[f64], rows: usize) -> Vec<f64> {
    let cols = x.len();
    (0..rows).map(|r| (0..cols).map(|c| w[r * cols + c] as f64 * x[c]).sum()).collect()
}

fn rms(x: &[f64], w: &[f32]) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    x.iter().zip(w).map(|(v, g)| v / (ms + EPS).sqrt() * *g as f64).collect()
}

fn rope(x: &mut [f64], pos: usize, interleaved: bool) {
    for head in x.chunks_mut(HD) {
        for i in 0..HD / 2 {
            let ang = pos as f64 * THETA.powf(-2.0 * i as f64 / HD as f64);
            let (a, b) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + HD / 2) };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * ang.cos() - x1 * ang.sin();
            head[b] = x0 * ang.sin() + x1 * ang.cos();
        }
    }
}

/// The architecture's equations, position by position, in f64.
fn reference(w: &Weights, tokens: &[u32], interleaved: bool, biases: bool) -> Vec<Vec<f64>> {
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| w.get("token_embd.weight")[t as usize * D..(t as usize + 1) * D].iter().map(|&v| v as f64).collect())
        .collect();
    for l in 0..LAYERS {
        let g = |s: &str| w.get(&format!("blk.{l}.{s}"));
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (p, x) in xs.iter().enumerate() {
            let h = rms(x, g("attn_norm.weight"));
            let (mut q, mut k, mut v) = (mv(g("attn_q.weight"), &h, HEADS * HD), mv(g("attn_k.weight"), &h, KV * HD), mv(g("attn_v.weight"), &h, KV * HD));
            if biases {
                q.iter_mut().zip(g("attn_q.bias")).for_each(|(a, b)| *a += *b as f64);
                k.iter_mut().zip(g("attn_k.bias")).for_each(|(a, b)| *a += *b as f64);
                v.iter_mut().zip(g("attn_v.bias")).for_each(|(a, b)| *a += *b as f64);
            }
            rope(&mut q, p, interleaved);
            rope(&mut k, p, interleaved);
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        for p in 0..xs.len() {
            let mut attn = vec![0f64; HEADS * HD];
            for h in 0..HEADS {
                let kv = h / (HEADS / KV);
                let q = &qs[p][h * HD..(h + 1) * HD];
                let s: Vec<f64> = (0..=p)
                    .map(|j| q.iter().zip(&ks[j][kv * HD..(kv + 1) * HD]).map(|(a, b)| a * b).sum::<f64>() / (HD as f64).sqrt())
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for (j, sj) in s.iter().enumerate() {
                    for d in 0..HD {
                        attn[h * HD + d] += (sj - m).exp() / z * vs[j][kv * HD + d];
                    }
                }
            }
            let o = mv(g("attn_output.weight"), &attn, D);
            xs[p].iter_mut().zip(o).for_each(|(a, b)| *a += b);
            let h = rms(&xs[p], g("ffn_norm.weight"));
            let gate = mv(g("ffn_gate.weight"), &h, FF);
            let up = mv(g("ffn_up.weight"), &h, FF);
            let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = mv(g("ffn_down.weight"), &act, D);
            xs[p].iter_mut().zip(down).for_each(|(a, b)| *a += b);
        }
    }
    xs.iter().map(|x| mv(w.get("output.weight"), &rms(x, w.get("output_norm.weight")), VOCAB)).collect()
}

fn check(arch: &str, biases: bool, interleaved: bool) {
    let w = make(arch, biases);
    let path = write_gguf(arch, &w);
    let m = sluice_model::load(&path, 2).unwrap();
    let tokens = [3u32, 17, 5, 29, 0, 11, 8];
    let mut cache = KvCache::new(&m.model.cfg, tokens.len());
    // Prompt in two chunks, so the second runs against cached keys and values.
    let mut got = m.model.forward(&tokens[..4], &mut cache, Logits::All).unwrap();
    got.extend(m.model.forward(&tokens[4..], &mut cache, Logits::All).unwrap());
    let want = reference(&w, &tokens, interleaved, biases);
    for (p, row) in want.iter().enumerate() {
        for (v, r) in row.iter().enumerate() {
            let g = got[p * VOCAB + v] as f64;
            assert!((g - r).abs() < 2e-3 * (1.0 + r.abs()), "{arch} pos {p} token {v}: {g} vs {r}");
        }
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn llama_matches_its_equations() {
    check("llama", false, true);
}

#[test]
fn mistral_is_llama() {
    check("mistral", false, true);
}

#[test]
fn qwen2_biases_and_half_split_rope_match_its_equations() {
    check("qwen2", true, false);
}
