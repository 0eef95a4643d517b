//! Per-head attention arithmetic, in the summation orders of our numerical reference (ggml's AVX2
//! build), over keys and values stored as f32 or half precision: q·k over the head dimension, a
//! softmax, and the weighted sum of values over positions, each summed as the reference sums it
//! for the token's kind (see [`SumOrder`]). Matching the orders keeps our attention outputs
//! bit-identical to the reference's. AVX2 or AVX-512 when available.
//!
//! Keys are rows of `head_dim` values; values are stored transposed per block (`PagedKv`), so
//! both sums are dot products with their accumulators in registers.

use half::f16;

use crate::quant::Isa;
use crate::vmath;

/// Lanes of the reference's `vec_dot`: 4 accumulators × 8 floats.
const LANES: usize = 32;

/// How the reference sums one of attention's dot products (q·k over dimensions with a
/// half-precision cache; weights·values over positions always). It depends on the token: the
/// reference multiplies a prompt as a matrix and a generated token as vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SumOrder {
    /// A generated token: `vec_dot_f32` / `vec_dot_f16`, element `i` feeding lane `i mod 32`.
    Dot,
    /// A prompt token: the tiled matrix product, one 8-lane accumulator per output, element
    /// `i` feeding lane `i mod 8`.
    Tiled,
}

impl SumOrder {
    fn lanes(self) -> usize {
        match self {
            SumOrder::Dot => LANES,
            SumOrder::Tiled => 8,
        }
    }

    /// Reduces the lane sums in the reference's tree order.
    fn reduce(self, acc: &[f32; LANES]) -> f32 {
        match self {
            SumOrder::Dot => {
                let mut v = [0f32; 8];
                for (l, x) in v.iter_mut().enumerate() {
                    *x = (acc[l] + acc[16 + l]) + (acc[8 + l] + acc[24 + l]);
                }
                let t = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
                (t[0] + t[1]) + (t[2] + t[3])
            }
            // The tiled product's horizontal sum: halves added lane by lane, then (0+2)+(1+3).
            SumOrder::Tiled => {
                let a = |l: usize| acc[l] + acc[l + 4];
                (a(0) + a(2)) + (a(1) + a(3))
            }
        }
    }
}

/// How many heads each kernel pass takes: up to three (their accumulators fill the sixteen
/// registers), four as two pairs.
#[cfg(target_arch = "x86_64")]
fn passes(heads: usize) -> impl Iterator<Item = usize> {
    let mut left = heads;
    std::iter::from_fn(move || {
        let take = if left == 4 { 2 } else { left.min(3) };
        left -= take;
        (take > 0).then_some(take)
    })
}

/// Element `i` of a cache run at `p` (f32, or half precision when `half`).
///
/// # Safety
/// `p` addresses at least `i + 1` elements.
#[inline]
unsafe fn load1(p: *const u8, i: usize, half: bool) -> f32 {
    // SAFETY: the caller's contract.
    unsafe {
        if half {
            f16::from_bits(std::ptr::read_unaligned((p as *const u16).add(i))).to_f32()
        } else {
            std::ptr::read_unaligned((p as *const f32).add(i))
        }
    }
}

/// `out[i] = (q · row_i) · scale` for every key row, summed over dimensions in `order` (the
/// reference uses `Dot` for every token with an f32 cache). With a half-precision cache (`half`)
/// the caller passes `q` already rounded to half precision, as the reference rounds it.
///
/// `heads` query heads that share the keys (grouped-query attention) go in one call: `q` holds
/// their queries one after another (`heads × dim`), `out` their scores (`heads × rows`). Each key
/// element is then read and converted once for all of them; every head's scores are bit-equal
/// to a call of its own.
///
/// # Safety
/// Every pointer in `rows` addresses `dim` readable cache elements.
#[allow(clippy::too_many_arguments)]
pub unsafe fn scores(isa: Isa, heads: usize, q: &[f32], rows: &[*const u8], half: bool, order: SumOrder, scale: f32, out: &mut [f32]) {
    let (dim, n) = (q.len() / heads.max(1), rows.len());
    debug_assert_eq!((q.len(), out.len()), (heads * dim, heads * n));
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && order == SumOrder::Dot && matches!(dim, 32 | 64 | 128) {
        let (mut q, mut out) = (q, out);
        for take in passes(heads) {
            let (qt, qr) = q.split_at(take * dim);
            let (ot, or) = std::mem::take(&mut out).split_at_mut(take * n);
            // SAFETY: AVX-512 detected; the rows are the caller's contract; take · dim / 16 <= 24.
            unsafe {
                if half {
                    scores_dot512::<true>(take, dim / 16, qt, rows, scale, ot);
                } else {
                    scores_dot512::<false>(take, dim / 16, qt, rows, scale, ot);
                }
            }
            (q, out) = (qr, or);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() && dim.is_multiple_of(LANES) {
        let (mut q, mut out) = (q, out);
        for take in passes(heads) {
            let (qt, qr) = q.split_at(take * dim);
            let (ot, or) = std::mem::take(&mut out).split_at_mut(take * n);
            let wide = isa == Isa::Avx512Vnni;
            // SAFETY: AVX2/FMA/F16C detected (AVX-512 where `wide`); the rows are the caller's
            // contract.
            unsafe {
                match (order, half, take) {
                    (SumOrder::Tiled, false, 1) if wide => avx512::scores_tiled::<1, false>(qt, rows, scale, ot),
                    (SumOrder::Tiled, true, 1) if wide => avx512::scores_tiled::<1, true>(qt, rows, scale, ot),
                    (SumOrder::Tiled, false, 2) if wide => avx512::scores_tiled::<2, false>(qt, rows, scale, ot),
                    (SumOrder::Tiled, true, 2) if wide => avx512::scores_tiled::<2, true>(qt, rows, scale, ot),
                    (SumOrder::Tiled, false, _) if wide => avx512::scores_tiled::<3, false>(qt, rows, scale, ot),
                    (SumOrder::Tiled, true, _) if wide => avx512::scores_tiled::<3, true>(qt, rows, scale, ot),
                    (SumOrder::Dot, false, 1) => avx2::scores_dot::<false>(qt, rows, scale, ot),
                    (SumOrder::Dot, true, 1) => avx2::scores_dot::<true>(qt, rows, scale, ot),
                    (SumOrder::Dot, false, 2) => avx2::scores_dot_heads::<2, false>(qt, rows, scale, ot),
                    (SumOrder::Dot, true, 2) => avx2::scores_dot_heads::<2, true>(qt, rows, scale, ot),
                    (SumOrder::Dot, false, _) => avx2::scores_dot_heads::<3, false>(qt, rows, scale, ot),
                    (SumOrder::Dot, true, _) => avx2::scores_dot_heads::<3, true>(qt, rows, scale, ot),
                    (SumOrder::Tiled, false, 1) => avx2::scores_tiled::<1, 8, false>(qt, rows, scale, ot),
                    (SumOrder::Tiled, true, 1) => avx2::scores_tiled::<1, 8, true>(qt, rows, scale, ot),
                    (SumOrder::Tiled, false, 2) => avx2::scores_tiled::<2, 4, false>(qt, rows, scale, ot),
                    (SumOrder::Tiled, true, 2) => avx2::scores_tiled::<2, 4, true>(qt, rows, scale, ot),
                    (SumOrder::Tiled, false, _) => avx2::scores_tiled::<3, 4, false>(qt, rows, scale, ot),
                    (SumOrder::Tiled, true, _) => avx2::scores_tiled::<3, 4, true>(qt, rows, scale, ot),
                }
            }
            (q, out) = (qr, or);
        }
        return;
    }
    let _ = isa;
    let lanes = order.lanes();
    for (qh, oh) in q.chunks_exact(dim.max(1)).zip(out.chunks_exact_mut(n.max(1))) {
        for (o, &r) in oh.iter_mut().zip(rows) {
            let mut acc = [0f32; LANES];
            for (i, x) in qh.iter().enumerate() {
                // SAFETY: the caller's contract.
                acc[i % lanes] = x.mul_add(unsafe { load1(r, i, half) }, acc[i % lanes]);
            }
            *o = order.reduce(&acc) * scale;
        }
    }
}

/// [`scores`]' AVX-512 `Dot` kernel for `take` (1-3) heads of `16·s` (2, 4 or 8) dimensions.
///
/// # Safety
/// As `avx512::scores_dot`.
#[cfg(target_arch = "x86_64")]
unsafe fn scores_dot512<const HALF: bool>(take: usize, s: usize, q: &[f32], rows: &[*const u8], scale: f32, out: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe {
        match (take, s) {
            (1, 2) => avx512::scores_dot::<1, 2, HALF>(q, rows, scale, out),
            (2, 2) => avx512::scores_dot::<2, 2, HALF>(q, rows, scale, out),
            (_, 2) => avx512::scores_dot::<3, 2, HALF>(q, rows, scale, out),
            (1, 4) => avx512::scores_dot::<1, 4, HALF>(q, rows, scale, out),
            (2, 4) => avx512::scores_dot::<2, 4, HALF>(q, rows, scale, out),
            (_, 4) => avx512::scores_dot::<3, 4, HALF>(q, rows, scale, out),
            (1, _) => avx512::scores_dot::<1, 8, HALF>(q, rows, scale, out),
            (2, _) => avx512::scores_dot::<2, 8, HALF>(q, rows, scale, out),
            (_, _) => avx512::scores_dot::<3, 8, HALF>(q, rows, scale, out),
        }
    }
}

/// In-place softmax as the reference computes it: `exp` by its polynomial ([`vmath::expf`]), the
/// normalising sum over 8-wide groups, each tree-summed in f32 (`(g0+g4)+(g2+g6)` plus
/// `(g1+g5)+(g3+g7)`), the groups accumulated in f64. AVX2 when available (same results).
pub fn softmax(isa: Isa, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() {
        // SAFETY: AVX2/FMA detected.
        unsafe { avx2::softmax(x) };
        return;
    }
    let _ = isa;
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for group in x.chunks_mut(8) {
        let mut g = [0f32; 8];
        for (gi, v) in g.iter_mut().zip(group.iter_mut()) {
            *v = vmath::expf(*v - max);
            *gi = *v;
        }
        sum += group_sum(&g);
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
}

#[inline]
fn group_sum(g: &[f32; 8]) -> f64 {
    let h = [g[0] + g[4], g[1] + g[5], g[2] + g[6], g[3] + g[7]];
    ((h[0] + h[2]) + (h[1] + h[3])) as f64
}

/// `out[d] = Σ_p w[p] · V(p)[d]` over values stored transposed per block: dimension `d` of the
/// block holding positions `i·bs..(i+1)·bs` is the run of `bs` elements at `blocks[i] + d·bs`,
/// so each output is a dot product over positions, summed in `order` (lanes by absolute
/// position) with its accumulators in registers. With a half-precision cache the caller passes
/// `w` already rounded to half precision, as the reference rounds it. Positions below `first`
/// have weight zero and are skipped where a whole group of eight is (their zero products
/// change nothing). `groups` is scratch space for the AVX2 path.
///
/// `heads` query heads that share the values (grouped-query attention) go in one call: `w`
/// holds their weights one after another (`heads × n`), `out` their outputs (`heads × dim`).
/// Each value is then read and converted once for all of them; every head's result is bit-equal
/// to a call of its own.
///
/// # Safety
/// `blocks` holds `n.div_ceil(bs)` pointers, each to `dim × bs` readable elements.
#[allow(clippy::too_many_arguments)]
pub unsafe fn weighted_sum(
    isa: Isa,
    order: SumOrder,
    first: usize,
    heads: usize,
    w: &[f32],
    blocks: &[*const u8],
    half: bool,
    bs: usize,
    out: &mut [f32],
    groups: &mut Vec<*const u8>,
) {
    let (n, dim) = (w.len() / heads.max(1), out.len() / heads.max(1));
    debug_assert_eq!((w.len(), out.len()), (heads * n, heads * dim));
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() && bs.is_multiple_of(8) && dim.is_multiple_of(8) {
        // AVX-512 takes positions sixteen at a time (a group then lies in one block).
        let wide = isa == Isa::Avx512Vnni && order == SumOrder::Dot && bs.is_multiple_of(16);
        let tiled512 = isa == Isa::Avx512Vnni && order == SumOrder::Tiled;
        let (span, esize) = (if wide { 16 } else { 8 }, if half { 2 } else { 4 });
        // Where each group of positions starts (dimension 0; dimension d is d·bs further).
        groups.clear();
        groups.extend((0..n.div_ceil(span)).map(|c| blocks[span * c / bs].wrapping_add(span * c % bs * esize)));
        let (mut w, mut out) = (w, out);
        for take in passes(heads) {
            let (wt, wr) = w.split_at(take * n);
            let (ot, or) = std::mem::take(&mut out).split_at_mut(take * dim);
            // SAFETY: AVX2/FMA/F16C detected (and AVX-512 where `wide`); the rest is the
            // caller's contract.
            unsafe {
                match (wide, take, half) {
                    (false, 1, false) if tiled512 => avx512::weighted_sum_tiled::<1, false>(first, wt, groups, bs, ot),
                    (false, 1, true) if tiled512 => avx512::weighted_sum_tiled::<1, true>(first, wt, groups, bs, ot),
                    (false, 2, false) if tiled512 => avx512::weighted_sum_tiled::<2, false>(first, wt, groups, bs, ot),
                    (false, 2, true) if tiled512 => avx512::weighted_sum_tiled::<2, true>(first, wt, groups, bs, ot),
                    (false, _, false) if tiled512 => avx512::weighted_sum_tiled::<3, false>(first, wt, groups, bs, ot),
                    (false, _, true) if tiled512 => avx512::weighted_sum_tiled::<3, true>(first, wt, groups, bs, ot),
                    (true, 1, false) => avx512::weighted_sum_dot::<1, 8, false>(first, wt, groups, bs, ot),
                    (true, 1, true) => avx512::weighted_sum_dot::<1, 8, true>(first, wt, groups, bs, ot),
                    (true, 2, false) => avx512::weighted_sum_dot::<2, 4, false>(first, wt, groups, bs, ot),
                    (true, 2, true) => avx512::weighted_sum_dot::<2, 4, true>(first, wt, groups, bs, ot),
                    (true, _, false) => avx512::weighted_sum_dot::<3, 4, false>(first, wt, groups, bs, ot),
                    (true, _, true) => avx512::weighted_sum_dot::<3, 4, true>(first, wt, groups, bs, ot),
                    (false, 1, false) => avx2::weighted_sum::<1, false>(order, first, wt, groups, bs, ot),
                    (false, 1, true) => avx2::weighted_sum::<1, true>(order, first, wt, groups, bs, ot),
                    (false, 2, false) => avx2::weighted_sum::<2, false>(order, first, wt, groups, bs, ot),
                    (false, 2, true) => avx2::weighted_sum::<2, true>(order, first, wt, groups, bs, ot),
                    (false, _, false) => avx2::weighted_sum::<3, false>(order, first, wt, groups, bs, ot),
                    (false, _, true) => avx2::weighted_sum::<3, true>(order, first, wt, groups, bs, ot),
                }
            }
            (w, out) = (wr, or);
        }
        return;
    }
    let _ = (isa, groups);
    let lanes = order.lanes();
    for (wh, oh) in w.chunks_exact(n.max(1)).zip(out.chunks_exact_mut(dim.max(1))) {
        for (d, o) in oh.iter_mut().enumerate() {
            let mut acc = [0f32; LANES];
            for (p, &wp) in wh.iter().enumerate().skip(first) {
                // SAFETY: the caller's contract.
                let v = unsafe { load1(blocks[p / bs], d * bs + p % bs, half) };
                acc[p % lanes] = wp.mul_add(v, acc[p % lanes]);
            }
            *o = order.reduce(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod q8;

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(o: &[f32]) -> Vec<u32> {
        o.iter().map(|v| v.to_bits()).collect()
    }

    /// Cache elements as stored: f32 bytes, or half-precision bits.
    fn store(x: &[f32], half: bool) -> Vec<u8> {
        if half {
            x.iter().flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes()).collect()
        } else {
            x.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
    }

    #[test]
    fn simd_and_scalar_agree_bit_for_bit() {
        // Every SIMD family the CPU has (AVX2 and, where present, AVX-512) against the portable code.
        let best = crate::quant::detect_isa();
        for isa in [Isa::Avx2, best].into_iter().filter(|&i| i == best || best.has_avx2()) {
            for half in [false, true] {
                let esize = if half { 2 } else { 4 };
                for hd in [32usize, 64, 128, 160] {
                    let q: Vec<f32> = (0..hd).map(|i| ((i * 29 % 13) as f32 - 6.0) * 0.05).collect();
                    for n in [1usize, 7, 8, 45, 130] {
                        let keys = store(&(0..n * hd).map(|i| ((i * 11 % 23) as f32 - 11.0) * 0.07).collect::<Vec<_>>(), half);
                        let ptrs: Vec<*const u8> = (0..n).map(|p| keys[p * hd * esize..].as_ptr()).collect();
                        for order in [SumOrder::Dot, SumOrder::Tiled] {
                            let (mut s1, mut s2) = (vec![0f32; n], vec![0f32; n]);
                            // SAFETY: every pointer has hd elements behind it.
                            unsafe {
                                scores(isa, 1, &q, &ptrs, half, order, 0.125, &mut s1);
                                scores(Isa::Scalar, 1, &q, &ptrs, half, order, 0.125, &mut s2);
                            }
                            assert_eq!(bits(&s1), bits(&s2), "scores of {n} rows, {hd} wide, {order:?}, half {half}");
                            // One to five heads sharing the keys, each its own query: every head
                            // bit-equal to its solo scores.
                            for heads in 2..=5 {
                                let qs: Vec<f32> = (0..heads * hd).map(|i| q[i % hd] * (1.0 + (i / hd) as f32 * 0.3)).collect();
                                let (mut m1, mut m2, mut solo) = (vec![0f32; heads * n], vec![0f32; heads * n], vec![0f32; n]);
                                // SAFETY: as above.
                                unsafe {
                                    scores(isa, heads, &qs, &ptrs, half, order, 0.125, &mut m1);
                                    scores(Isa::Scalar, heads, &qs, &ptrs, half, order, 0.125, &mut m2);
                                }
                                assert_eq!(bits(&m1), bits(&m2), "{heads} heads, {n} rows, {hd} wide, {order:?}, half {half}");
                                for h in 0..heads {
                                    // SAFETY: as above.
                                    unsafe { scores(isa, 1, &qs[h * hd..(h + 1) * hd], &ptrs, half, order, 0.125, &mut solo) };
                                    assert_eq!(bits(&solo), bits(&m1[h * n..(h + 1) * n]), "head {h} of {heads}, {order:?}, half {half}");
                                }
                            }
                            for (p, s) in s1.iter().enumerate() {
                                // SAFETY: row p holds hd elements.
                                let naive: f32 = (0..hd).map(|i| q[i] * unsafe { load1(ptrs[p], i, half) }).sum::<f32>() * 0.125;
                                assert!((s - naive).abs() < 1e-4, "{s} vs {naive}");
                            }
                        }
                    }
                }
                // Up to 64 positions of 16-wide values in blocks of 16 or 32 positions, stored
                // transposed per block; 45 and 61 positions end in a partial group of sixteen after
                // an even and an odd number of whole ones, and a window's first position falls in
                // the first, second or third group.
                let value = |p: usize, d: usize| ((p * 16 + d) % 7) as f32 * 0.37 - 1.1;
                for bs in [16usize, 32] {
                    let data = store(&(0..64 * 16).map(|i| value(i / (16 * bs) * bs + i % bs, i % (16 * bs) / bs)).collect::<Vec<_>>(), half);
                    let blocks: Vec<*const u8> = (0..64 / bs).map(|b| data[b * 16 * bs * esize..].as_ptr()).collect();
                    // One to five heads sharing the values (each pass takes up to three), each head
                    // with its own weights: every head bit-equal to the scalar sum and to a call of
                    // its own.
                    for (heads, n) in (1..=5).flat_map(|h| [(h, 45usize), (h, 61)]) {
                        let (mut o1, mut o2, mut solo) = (vec![0f32; 16 * heads], vec![0f32; 16 * heads], vec![0f32; 16]);
                        for first in [0, 13, 29, 40] {
                            let w: Vec<f32> = (0..n * heads)
                                .map(|i| if i % n < first { 0.0 } else { (1 + i / n) as f32 / (i % n + 1) as f32 })
                                .collect();
                            for order in [SumOrder::Dot, SumOrder::Tiled] {
                                let what = format!("{order:?}, {heads} heads, {n} positions, first {first}, blocks of {bs}, half {half}");
                                // SAFETY: 64 positions of 16 dimensions in blocks of bs.
                                unsafe {
                                    weighted_sum(isa, order, first, heads, &w, &blocks, half, bs, &mut o1, &mut Vec::new());
                                    weighted_sum(Isa::Scalar, order, first, heads, &w, &blocks, half, bs, &mut o2, &mut Vec::new());
                                }
                                assert_eq!(bits(&o1), bits(&o2), "{what}");
                                for h in 0..heads {
                                    let wh = &w[h * n..(h + 1) * n];
                                    // SAFETY: as above.
                                    unsafe { weighted_sum(isa, order, first, 1, wh, &blocks, half, bs, &mut solo, &mut Vec::new()) };
                                    assert_eq!(bits(&solo), bits(&o1[h * 16..(h + 1) * 16]), "head {h}: {what}");
                                    for (d, o) in solo.iter().enumerate() {
                                        let naive: f32 = (0..n).map(|p| wh[p] * value(p, d)).sum();
                                        assert!((o - naive).abs() < 3e-3 * (1.0 + naive.abs()), "{what}, {d}: {o} vs {naive}");
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for n in [1usize, 7, 8, 45, 130] {
                let x: Vec<f32> = (0..n).map(|i| ((i * 11 % 23) as f32 - 11.0) * 0.3).collect();
                let (mut p1, mut p2) = (x.clone(), x.clone());
                softmax(isa, &mut p1);
                softmax(Isa::Scalar, &mut p2);
                assert_eq!(bits(&p1), bits(&p2), "softmax of {n}");
                assert!((p1.iter().map(|v| *v as f64).sum::<f64>() - 1.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn the_two_orders_associate_as_the_reference_does() {
        // 1e8 absorbs a 1.0 added to it in f32, so the association shows in the result.
        let mut acc = [0f32; LANES];
        acc[0] = 1e8;
        acc[1] = 1.0;
        acc[2] = -1e8;
        // The tiled sum adds lanes 0 and 2 first; vec_dot's tree adds lanes 0 and 1 first.
        assert_eq!(SumOrder::Tiled.reduce(&acc), 1.0);
        assert_eq!(SumOrder::Dot.reduce(&acc), 0.0);
        let mut acc = [0f32; LANES];
        acc[0] = 1e8;
        acc[16] = 1.0;
        acc[4] = -1e8;
        // vec_dot adds its accumulators 0 and 2 (lanes 0 and 16) before lanes 0 and 4.
        assert_eq!(SumOrder::Dot.reduce(&acc), 0.0);
    }
}
