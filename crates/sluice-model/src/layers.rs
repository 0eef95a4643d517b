//! Shared transformer layers: RMSNorm, rotary embeddings, activations and causal attention over
//! a sequence's cached keys and values. Shapes are row-major `[tokens × features]`.

use std::sync::OnceLock;

use half::f16;
use rayon::prelude::*;

use crate::attention_kernels as attn;
pub use crate::attention_kernels::SumOrder;
use crate::cache::KvView;
use crate::config::{Activation, RopeStyle};
use crate::quant::Isa;

/// RMSNorm of every `w.len()`-wide row of `x` in place: `x * w / rms(x)`.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    // A batch's rows four at a time in parallel: the other thread would otherwise idle (and
    // fall asleep, to be woken for the next product).
    let n = w.len();
    if x.len() >= 8 * n && n > 0 {
        x.par_chunks_mut(4 * n).for_each(|quad| rms_norm_rows(quad, w, eps));
    } else {
        rms_norm_rows(x, w, eps);
    }
}

fn rms_norm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    // Sum of squares in f64, in order, then scale and weight as separate roundings: the same
    // arithmetic as ggml, so our activations quantize exactly like the reference's. The ordered
    // sum is a chain of dependent adds; four rows' chains run side by side.
    let n = w.len();
    let mut quads = x.chunks_exact_mut(4 * n);
    for quad in &mut quads {
        let mut ss = [0f64; 4];
        for i in 0..n {
            for (r, s) in ss.iter_mut().enumerate() {
                let v = quad[r * n + i];
                *s += (v * v) as f64;
            }
        }
        for (row, s) in quad.chunks_exact_mut(n).zip(ss) {
            scale_row(row, w, s, eps);
        }
    }
    for row in quads.into_remainder().chunks_exact_mut(n) {
        let ss = row.iter().fold(0f64, |s, &v| s + (v * v) as f64);
        scale_row(row, w, ss, eps);
    }
}

/// `row * w / rms`, given the row's sum of squares.
fn scale_row(row: &mut [f32], w: &[f32], ss: f64, eps: f32) {
    let mean = (ss / w.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for (v, g) in row.iter_mut().zip(w) {
        *v = (*v * scale) * g;
    }
}

/// Rotary position embedding tables for one base frequency.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `theta^(-2/head_dim)`: angles are built by repeated multiplication in f32, as ggml does.
    theta_scale: f32,
    half: usize,
    style: RopeStyle,
    /// Linear position scaling (1 = none).
    freq_scale: f32,
    /// Per-pair divisors of the angle (Llama 3.1's `rope_freqs`), if any.
    freq_factors: Option<Vec<f32>>,
}

impl Rope {
    /// Tables for `head_dim`-wide heads rotated with base `theta`.
    pub fn new(head_dim: usize, theta: f32, style: RopeStyle) -> Self {
        Self { theta_scale: theta.powf(-2.0 / head_dim as f32), half: head_dim / 2, style, freq_scale: 1.0, freq_factors: None }
    }

    /// With linear position scaling and per-pair frequency divisors (`head_dim / 2` of them).
    pub fn scaled(mut self, freq_scale: f32, freq_factors: Option<Vec<f32>>) -> Self {
        self.freq_scale = freq_scale;
        self.freq_factors = freq_factors;
        self
    }

    /// Rotates every head of one token's projection `x` (`n_heads × head_dim`) at `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let mut angles = Vec::with_capacity(self.half);
        self.angles(pos, &mut angles);
        self.rotate(crate::quant::detect_isa(), &angles, x);
    }

    /// Appends the (sin, cos) of every dimension pair's angle at `pos` (`head_dim / 2` of them)
    /// to `out`: the same for every layer, so a forward pass builds them once per token and
    /// [`Self::rotate`]s each layer's projections.
    pub fn angles(&self, pos: usize, out: &mut Vec<(f32, f32)>) {
        let mut angle = pos as f32;
        out.extend((0..self.half).map(|i| {
            let ff = self.freq_factors.as_ref().map_or(1.0, |f| f[i]);
            let t = (self.freq_scale * (angle / ff)).sin_cos();
            angle *= self.theta_scale;
            t
        }));
    }

    /// Rotates every head of `x` by `angles` (from [`Self::angles`]).
    pub fn rotate(&self, isa: Isa, angles: &[(f32, f32)], x: &mut [f32]) {
        debug_assert_eq!(angles.len(), self.half);
        #[cfg(target_arch = "x86_64")]
        if isa.has_avx2() {
            // SAFETY: FMA was detected (`Isa::has_avx2`).
            unsafe { rotate_fma(self.style, angles, x) };
            return;
        }
        let _ = isa;
        rotate(self.style, angles, x);
    }
}

/// The rotation, fused as the reference's compiler fuses it (`x0·cos − x1·sin` becomes
/// `fma(x0, cos, −(x1·sin))`): the unfused form differs in the last bit for about one value in
/// seven, which the next 8-bit activation quantization can turn into a different token.
#[inline(always)]
fn rotate(style: RopeStyle, table: &[(f32, f32)], x: &mut [f32]) {
    let half = table.len();
    for head in x.chunks_exact_mut(half * 2) {
        for (i, &(sin, cos)) in table.iter().enumerate() {
            let (a, b) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::HalfSplit => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0.mul_add(cos, -(x1 * sin));
            head[b] = x0.mul_add(sin, x1 * cos);
        }
    }
}

/// [`rotate`] with `mul_add` as one instruction instead of a library call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn rotate_fma(style: RopeStyle, table: &[(f32, f32)], x: &mut [f32]) {
    rotate(style, table, x);
}

/// `act(gate) * up`, elementwise, into `gate`.
pub fn gated_activation(isa: Isa, act: Activation, gate: &mut [f32], up: &[f32]) {
    // A batch's worth in parallel pieces (element-wise: the results do not depend on the split).
    const PIECE: usize = 4096;
    if gate.len() >= 2 * PIECE {
        gate.par_chunks_mut(PIECE).zip(up.par_chunks(PIECE)).for_each(|(g, u)| gated_activation_of(isa, act, g, u));
    } else {
        gated_activation_of(isa, act, gate, up);
    }
}

fn gated_activation_of(isa: Isa, act: Activation, gate: &mut [f32], up: &[f32]) {
    match act {
        Activation::Silu => crate::vmath::silu_mul(isa, gate, up),
        Activation::GeluTanh => {
            let table = gelu_table();
            for (g, u) in gate.iter_mut().zip(up) {
                let x = *g;
                *g = if x <= -10.0 {
                    0.0
                } else if x >= 10.0 {
                    x * u
                } else {
                    f16::from_bits(table[f16::from_f32(x).to_bits() as usize]).to_f32() * u
                };
            }
        }
    }
}

/// `1 + 0.044715·x·x` fused into one multiply-add, as the reference's compiler builds it.
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (0.044715 * x).mul_add(x, 1.0)).tanh())
}

/// GELU of every half-precision value: the activation is evaluated at f16 resolution, as in
/// llama.cpp (our reference), which also makes it a single table lookup.
fn gelu_table() -> &'static [u16] {
    static TABLE: OnceLock<Vec<u16>> = OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|b| f16::from_f32(gelu_tanh(f16::from_bits(b).to_f32())).to_bits()).collect())
}

/// A query token of an attention call: its position and which sequence (block table) it
/// belongs to.
#[derive(Debug, Clone, Copy)]
pub struct AttnToken {
    /// Position in its sequence.
    pub pos: usize,
    /// Index into `AttentionInput::tables`.
    pub seq: usize,
    /// How its attention sums are ordered (prompt token or generated token).
    pub order: SumOrder,
}

/// What one attention call reads: the step's queries and one layer's paged keys/values.
pub struct AttentionInput<'a> {
    /// Queries, `n_tok × (n_heads × head_dim)`, already rotated (`scale` is applied here).
    pub q: &'a [f32],
    /// The layer's keys, this step's already written: per block, each KV head's `block_size`
    /// rows of `head_dim` back to back (8-bit codes: their byte-dot layout; see `PagedKv`).
    pub k_cache: KvView<'a>,
    /// The layer's values, block by block, each block transposed: dimension `d` of position
    /// `block·bs + i` at `(block·kv_dim + d)·bs + i` (see `PagedKv`).
    pub v_cache: KvView<'a>,
    /// One entry per query token.
    pub tokens: &'a [AttnToken],
    /// Block table of each sequence in the step.
    pub tables: &'a [&'a [u32]],
    /// Positions per block.
    pub block_size: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Multiplier for q·k.
    pub scale: f32,
    /// Whether the reference multiplies the query by `scale` before q·k (Gemma) rather than
    /// the scores after it (the rest): the roundings differ unless the scale is a power of two,
    /// and with a half-precision cache also then (the query is rounded after scaling).
    pub scale_query: bool,
    /// Only keys within this many positions back are visible (sliding window), if set.
    pub window: Option<usize>,
}



/// Causal attention: `out` (`n_tok × n_heads × head_dim`) for each query token over its own
/// sequence's keys `[max(0, pos - window + 1), pos]`. Parallel over (token, KV head): the query
/// heads sharing a KV head gather its rows once and sum its values together.
pub fn attention(isa: Isa, inp: &AttentionInput<'_>, out: &mut [f32]) {
    let hd = inp.head_dim;
    let q_dim = inp.n_heads * hd;
    let kv_dim = inp.n_kv_heads * hd;
    let group = inp.n_heads / inp.n_kv_heads;
    let half = inp.k_cache.is_f16();
    let q8 = inp.k_cache.q8_scales().zip(inp.v_cache.q8_scales());
    let esize = inp.k_cache.elem_bytes();
    out.par_chunks_mut(group * hd).enumerate().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), attn::q8::QueryCodes::default()),
        |(scores, weights, keys, values, groups, q_buf, kscales, vscales, qcodes), (idx, o)| {
            let (t, kvh) = (idx / inp.n_kv_heads, idx % inp.n_kv_heads);
            let AttnToken { pos, seq, order } = inp.tokens[t];
            let first = match inp.window {
                Some(w) => (pos + 1).saturating_sub(w),
                None => 0,
            };
            let bs = inp.block_size;
            // Key rows of positions first..=pos and the KV head's value block of every block up
            // to pos (in bounds: the model validates block tables before attention runs).
            keys.clear();
            values.clear();
            kscales.clear();
            vscales.clear();
            for (bi, &b) in inp.tables[seq].iter().enumerate().take(pos / bs + 1) {
                let at = b as usize * bs * kv_dim + kvh * hd * bs;
                values.push(inp.v_cache.ptr(at));
                if bi < first / bs {
                    continue;
                }
                let key_block = inp.k_cache.ptr(at);
                // A generated token's keys and values come from memory (a prompt token's were
                // just read for the token before it): ask for the whole window's now, many misses
                // in flight, rather than a few at a time as the sums reach each block.
                if order == SumOrder::Dot {
                    let head_bytes = hd * bs * esize;
                    crate::mem::prefetch_l2(key_block, head_bytes);
                    crate::mem::prefetch_l2(inp.v_cache.ptr(at), head_bytes);
                }
                let (lo, hi) = ((bi * bs).max(first) - bi * bs, (pos + 1).min((bi + 1) * bs) - bi * bs);
                if let Some((ks, vs)) = q8 {
                    // 8-bit keys: the block (byte-dot layout), and the runs of the head's key and
                    // value scales in the block.
                    keys.push(key_block);
                    let s = crate::cache::q8_scale_at(b as usize * bs, kvh * hd / crate::cache::Q8_CHUNK, bs, kv_dim);
                    kscales.push(ks.as_ptr().wrapping_add(s));
                    vscales.push(vs.as_ptr().wrapping_add(s));
                } else {
                    // Key rows, position by position (head-major within the block).
                    keys.extend((lo..hi).map(|p| key_block.wrapping_add(p * hd * esize)));
                }
            }
            let heads = t * q_dim + kvh * group * hd..t * q_dim + (kvh + 1) * group * hd;
            if q8.is_some() {
                let q = &inp.q[heads];
                let (q, scale) = if inp.scale_query {
                    q_buf.clear();
                    q_buf.extend(q.iter().map(|&x| x * inp.scale));
                    (&q_buf[..], 1.0)
                } else {
                    (q, inp.scale)
                };
                let task = Q8Task { q, group, first, pos, bs, scale };
                q8_attention(isa, &task, (keys, &values[first / bs..], kscales, vscales), (scores, qcodes), o);
                return;
            }
            // The group's queries (back to back in `q`): a half-precision cache meets them
            // (scaled first where the model does) rounded to half precision, and the reference
            // then sums q·k in the token's order (with f32, always as `Dot`).
            let mut q = &inp.q[heads];
            let mut scale = inp.scale;
            if half || inp.scale_query {
                let s = if inp.scale_query { inp.scale } else { 1.0 };
                q_buf.clear();
                q_buf.extend(q.iter().map(|&x| x * s));
                if half {
                    crate::vmath::round_to_half(isa, q_buf);
                }
                q = q_buf;
                scale /= s;
            }
            let qk_order = if half { order } else { SumOrder::Dot };
            scores.clear();
            scores.resize(group * keys.len(), 0.0);
            // SAFETY: each pointer addresses the hd elements of a written key row (above).
            unsafe { attn::scores(isa, group, q, keys, half, qk_order, scale, scores) };
            // Each head's weights over positions 0..=pos, one head after another. Positions
            // before the window have zero weight; lanes still follow absolute positions.
            // Without a window the scores' layout is the weights' own: no copy.
            for sh in scores.chunks_exact_mut(keys.len().max(1)) {
                attn::softmax(isa, sh);
                if half {
                    crate::vmath::round_to_half(isa, sh);
                }
            }
            let weights = if first == 0 {
                &scores[..]
            } else {
                weights.clear();
                for sh in scores.chunks_exact(keys.len().max(1)) {
                    weights.resize(weights.len() + first, 0.0);
                    weights.extend_from_slice(sh);
                }
                &weights[..]
            };
            // SAFETY: each value block holds kv_dim × bs elements, the KV head's hd × bs from
            // the pointer on, written for every position <= pos.
            unsafe { attn::weighted_sum(isa, order, first, group, weights, values, half, bs, o, groups) };
        },
    );
}

/// One (token, KV head) attention task over an 8-bit cache.
struct Q8Task<'a> {
    /// The group's queries (scaled where the model scales queries).
    q: &'a [f32],
    group: usize,
    first: usize,
    pos: usize,
    bs: usize,
    /// Multiplier for the scores.
    scale: f32,
}

/// [`attention`]'s task over an 8-bit cache, over the blocks from the window's first (`keys`,
/// `values`: the head's part of each; `ks`, `vs`: its runs of key and value scales): scores
/// from the key codes and the encoded queries, a softmax per head over the window (the blocks'
/// other positions then weigh zero), and the weighted sum over the value codes.
#[allow(clippy::type_complexity)]
fn q8_attention(
    isa: Isa,
    t: &Q8Task<'_>,
    (keys, values, ks, vs): (&[*const u8], &[*const u8], &[*const f32], &[*const f32]),
    (scores, qcodes): (&mut Vec<f32>, &mut attn::q8::QueryCodes),
    out: &mut [f32],
) {
    // The blocks' positions from the first block's start; the window's first at `lo`.
    let np = keys.len() * t.bs;
    let (lo, n) = (t.first % t.bs, t.pos + 1 - t.first);
    qcodes.encode(t.q);
    scores.clear();
    scores.resize(t.group * np, 0.0);
    // SAFETY: each key block pointer addresses the head's hd × bs codes, each scale pointer its
    // hd / 32 runs of bs scales.
    unsafe { attn::q8::scores(isa, t.group, qcodes, keys, ks, t.bs, t.scale, scores) };
    for sh in scores.chunks_exact_mut(np.max(1)) {
        attn::softmax(isa, &mut sh[lo..lo + n]);
        sh[..lo].fill(0.0);
        sh[lo + n..].fill(0.0);
    }
    // SAFETY: each value block holds kv_dim × bs codes, the KV head's hd × bs from the pointer
    // on, and its scale runs as the keys'; bs is a multiple of 8 (checked by the model).
    unsafe { attn::q8::weighted_sum(isa, t.group, scores, values, vs, t.bs, out) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_styles_preserve_norm_and_rotate_at_zero_not_at_all() {
        for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
            let rope = Rope::new(8, 10000.0, style);
            let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.5).collect();
            let mut x = orig.clone();
            rope.apply(&mut x, 0);
            assert_eq!(x, orig);
            rope.apply(&mut x, 17);
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
        }
    }

    #[test]
    fn rope_scaling_and_frequency_factors_slow_rotation_down() {
        let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
        let plain = Rope::new(8, 10000.0, RopeStyle::HalfSplit);
        let mut at1 = x.clone();
        plain.apply(&mut at1, 1);
        let linear = Rope::new(8, 10000.0, RopeStyle::HalfSplit).scaled(0.5, None);
        let mut at2 = x.clone();
        linear.apply(&mut at2, 2);
        let factors = Rope::new(8, 10000.0, RopeStyle::HalfSplit).scaled(1.0, Some(vec![2.0; 4]));
        let mut at2f = x.clone();
        factors.apply(&mut at2f, 2);
        for ((a, b), c) in at1.iter().zip(&at2).zip(&at2f) {
            assert!((a - b).abs() < 1e-6 && (a - c).abs() < 1e-6, "{a} {b} {c}");
        }
    }

    /// Attention over an 8-bit cache, through scattered blocks and a sliding window (whose
    /// first position falls inside a block), stays close to attention over an f32 cache, and
    /// every kernel family gives it to the bit.
    #[test]
    fn attention_over_an_8_bit_cache_follows_the_f32_cache_through_blocks_and_windows() {
        use crate::cache::{KvDtype, PagedKv};
        use crate::config::{Arch, ModelConfig};
        let cfg = ModelConfig {
            arch: Arch::Llama,
            n_layers: 1,
            d_model: 256,
            ffn_dim: 512,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 64,
            vocab_size: 10,
            context_length: 128,
            rms_eps: 1e-6,
            rope_theta: 10000.0,
            rope_theta_local: 10000.0,
            rope_style: RopeStyle::HalfSplit,
            rope_freq_scale: 1.0,
            sliding_window: None,
            layer_is_sliding: vec![false],
            embed_scale: 1.0,
            attn_scale: 0.125,
            activation: Activation::Silu,
            final_logit_softcap: None,
        };
        let (bs, kv_dim, q_dim) = (16, 128, 256);
        let table: Vec<u32> = vec![5, 2, 7, 0];
        let val = |p: usize, i: usize, salt: usize| (((p * 37 + i * 11 + salt * 7) % 41) as f32 - 20.0) / 20.0;
        let caches: Vec<PagedKv> = [KvDtype::F32, KvDtype::Q8_0]
            .into_iter()
            .map(|dtype| {
                let mut kv = PagedKv::with_dtype(&cfg, 8, bs, dtype);
                for p in 0..50 {
                    let k: Vec<f32> = (0..kv_dim).map(|i| val(p, i, 1)).collect();
                    let v: Vec<f32> = (0..kv_dim).map(|i| val(p, i, 2)).collect();
                    kv.store_row(crate::quant::detect_isa(), 0, table[p / bs] as usize * bs + p % bs, &k, &v);
                }
                kv
            })
            .collect();
        let q: Vec<f32> = (0..2 * q_dim).map(|i| val(i, i, 3)).collect();
        let tokens = [AttnToken { pos: 49, seq: 0, order: SumOrder::Dot }, AttnToken { pos: 37, seq: 0, order: SumOrder::Tiled }];
        let tables: [&[u32]; 1] = [&table];
        for window in [None, Some(27)] {
            let run = |kv: &PagedKv, isa: Isa| {
                let inp = AttentionInput {
                    q: &q,
                    k_cache: kv.k[0].view(),
                    v_cache: kv.v[0].view(),
                    tokens: &tokens,
                    tables: &tables,
                    block_size: bs,
                    n_heads: 4,
                    n_kv_heads: 2,
                    head_dim: 64,
                    scale: 0.125,
                    scale_query: false,
                    window,
                };
                let mut out = vec![0f32; 2 * q_dim];
                attention(isa, &inp, &mut out);
                out
            };
            let exact = run(&caches[0], crate::quant::detect_isa());
            let coded = run(&caches[1], crate::quant::detect_isa());
            for (i, (a, b)) in exact.iter().zip(&coded).enumerate() {
                assert!((a - b).abs() < 0.02, "window {window:?}, output {i}: f32 cache {a}, 8-bit cache {b}");
            }
            let portable = run(&caches[1], Isa::Scalar);
            assert!(portable.iter().zip(&coded).all(|(a, b)| a.to_bits() == b.to_bits()), "window {window:?}: kernel families differ");
        }
    }

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let q = [1.0, 0.0, 0.0, 1.0];
        let k = [0.3, 0.2];
        let v = [5.0, -2.0];
        let mut out = [0.0; 4];
        let inp = AttentionInput {
            q: &q,
            k_cache: KvView::F32(&k),
            v_cache: KvView::F32(&v),
            tokens: &[AttnToken { pos: 0, seq: 0, order: SumOrder::Tiled }],
            tables: &[&[0]],
            block_size: 1,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 2,
            scale: 1.0,
            scale_query: false,
            window: None,
        };
        attention(Isa::Scalar, &inp, &mut out);
        assert_eq!(out, [5.0, -2.0, 5.0, -2.0]);
    }
}
