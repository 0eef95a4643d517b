//! Per-head attention arithmetic, in the summation orders of our numerical reference (ggml's AVX2
//! build): q·k over the head dimension as its 8-lane × 4-accumulator `vec_dot_f32`, and the
//! softmax-weighted sum of values as it does it for the step's shape (see [`ValueOrder`]).
//! Matching the orders keeps our attention outputs bit-identical to the reference's. AVX2 when
//! available.

use crate::quant::Isa;
use crate::vmath;

/// Lanes of the reference's q·k accumulation: 4 accumulators × 8 floats.
const LANES: usize = 32;
/// How the reference sums a query's weighted values: one way within a prompt, another for a
/// token decoded on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueOrder {
    /// A generated token (the reference decodes it alone): `vec_dot_f32`, position `p` feeding
    /// lane `p mod 32`.
    Dot,
    /// A prompt token (the reference runs the prompt as one batch): its tiled f32 matrix
    /// product, one 8-lane accumulator per output, position `p` feeding lane `p mod 8`.
    Tiled,
}

impl ValueOrder {
    fn lanes(self) -> usize {
        match self {
            ValueOrder::Dot => LANES,
            ValueOrder::Tiled => 8,
        }
    }
}

/// Reduces 32 lane sums in the reference's tree order.
#[inline]
fn reduce_lanes(acc: &[f32; LANES]) -> f32 {
    let mut v = [0f32; 8];
    for (l, x) in v.iter_mut().enumerate() {
        *x = (acc[l] + acc[16 + l]) + (acc[8 + l] + acc[24 + l]);
    }
    let t = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (t[0] + t[1]) + (t[2] + t[3])
}

/// `Σ a[i]·b[i]`, lane-ordered (missing elements count as zero).
#[inline]
pub fn dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() && a.len() == b.len() && a.len().is_multiple_of(LANES) {
        // SAFETY: AVX2/FMA were detected (Isa::Avx2) and the lengths are checked.
        return unsafe { avx2::dot(a, b) };
    }
    let _ = isa;
    let mut acc = [0f32; LANES];
    for (ca, cb) in a.chunks(LANES).zip(b.chunks(LANES)) {
        for (i, (x, y)) in ca.iter().zip(cb).enumerate() {
            acc[i] = x.mul_add(*y, acc[i]);
        }
    }
    reduce_lanes(&acc)
}

/// `out[i] = dot(q, rows[i]) * scale` for every row (bit-equal to calling [`dot`] per row; the
/// AVX2 path reduces eight rows' lanes together instead of one row at a time).
///
/// # Safety
/// Every pointer in `rows` must point at `q.len()` readable floats.
pub unsafe fn scores(isa: Isa, q: &[f32], rows: &[*const f32], scale: f32, out: &mut [f32]) {
    debug_assert_eq!(rows.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() && q.len().is_multiple_of(LANES) {
        // SAFETY: AVX2/FMA detected; the rows are the caller's contract.
        unsafe { avx2::scores(q, rows, scale, out) };
        return;
    }
    for (o, &r) in out.iter_mut().zip(rows) {
        // SAFETY: the caller's contract.
        *o = dot(isa, q, unsafe { std::slice::from_raw_parts(r, q.len()) }) * scale;
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
/// block holding positions `i·bs..(i+1)·bs` is the run of `bs` floats at `blocks[i] + d·bs`,
/// so each output is a dot product over positions, summed in the reference's `order` (lanes by
/// absolute position) with its accumulators in registers. Positions below `first` have weight
/// zero and are skipped where a whole group of eight is (their zero products change nothing).
///
/// `groups` is scratch space for the AVX2 path.
///
/// # Safety
/// `blocks` holds `w.len().div_ceil(bs)` pointers, each to `out.len() × bs` readable floats.
#[allow(clippy::too_many_arguments)]
pub unsafe fn weighted_sum(
    isa: Isa,
    order: ValueOrder,
    first: usize,
    w: &[f32],
    blocks: &[*const f32],
    bs: usize,
    out: &mut [f32],
    groups: &mut Vec<*const f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() && bs.is_multiple_of(8) && out.len().is_multiple_of(4) {
        // Where each group of eight positions starts (dimension 0; dimension d is d·bs further).
        groups.clear();
        groups.extend((0..w.len().div_ceil(8)).map(|c| blocks[8 * c / bs].wrapping_add(8 * c % bs)));
        // SAFETY: AVX2/FMA detected; the rest is the caller's contract.
        unsafe { avx2::weighted_sum(order, first, w, groups, bs, out) };
        return;
    }
    let _ = groups;
    let _ = isa;
    let lanes = order.lanes();
    for (d, o) in out.iter_mut().enumerate() {
        let mut acc = [0f32; LANES];
        for (p, &wp) in w.iter().enumerate().skip(first) {
            // SAFETY: the caller's contract.
            let v = unsafe { *blocks[p / bs].add(d * bs + p % bs) };
            acc[p % lanes] = wp.mul_add(v, acc[p % lanes]);
        }
        *o = match order {
            ValueOrder::Dot => reduce_lanes(&acc),
            // The tiled product's horizontal sum: halves added lane by lane, then (0+2)+(1+3).
            ValueOrder::Tiled => {
                let a = |l: usize| acc[l] + acc[l + 4];
                (a(0) + a(2)) + (a(1) + a(3))
            }
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::ValueOrder;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 and FMA required; `a.len() == b.len()`, a multiple of 32.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut s = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < a.len() {
            for (k, acc) in s.iter_mut().enumerate() {
                // SAFETY: i + 8k + 8 <= len (len is a multiple of 32).
                let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i + 8 * k)), _mm256_loadu_ps(pb.add(i + 8 * k))) };
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        let v = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
        let t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_hadd_ps(t, t);
        _mm_cvtss_f32(_mm_hadd_ps(h, h))
    }

    /// # Safety
    /// AVX2 and FMA required; `q.len()` a multiple of 32; every row holds `q.len()` floats.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores(q: &[f32], rows: &[*const f32], scale: f32, out: &mut [f32]) {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            match q.len() {
                64 => scores_with::<2>(q, rows, scale, out),
                128 => scores_with::<4>(q, rows, scale, out),
                _ => scores_with::<0>(q, rows, scale, out),
            }
        }
    }

    /// [`scores`] with the query held in registers when it is `32·S` wide (`S > 0`), read from
    /// memory for every row otherwise.
    ///
    /// # Safety
    /// As [`scores`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_with<const S: usize>(q: &[f32], rows: &[*const f32], scale: f32, out: &mut [f32]) {
        let qp = q.as_ptr();
        let sc = _mm256_set1_ps(scale);
        let mut qr = [[_mm256_setzero_ps(); 4]; S];
        for (i, c) in qr.iter_mut().enumerate() {
            for (k, x) in c.iter_mut().enumerate() {
                // SAFETY: q holds 32·S floats when S > 0.
                *x = unsafe { _mm256_loadu_ps(qp.add(32 * i + 8 * k)) };
            }
        }
        for (chunk, o) in rows.chunks(8).zip(out.chunks_mut(8)) {
            // Per row, the 8-lane vector `dot` reduces from: (s0 + s2) + (s1 + s3).
            let mut v = [_mm256_setzero_ps(); 8];
            for (vr, &r) in v.iter_mut().zip(chunk) {
                let mut s = [_mm256_setzero_ps(); 4];
                if S > 0 {
                    for (i, c) in qr.iter().enumerate() {
                        for (k, acc) in s.iter_mut().enumerate() {
                            // SAFETY: the row holds 32·S floats (caller contract).
                            let y = unsafe { _mm256_loadu_ps(r.add(32 * i + 8 * k)) };
                            *acc = _mm256_fmadd_ps(c[k], y, *acc);
                        }
                    }
                } else {
                    for i in (0..q.len()).step_by(32) {
                        for (k, acc) in s.iter_mut().enumerate() {
                            // SAFETY: i + 8k + 8 <= len for the query and the row (caller contract).
                            let (x, y) = unsafe { (_mm256_loadu_ps(qp.add(i + 8 * k)), _mm256_loadu_ps(r.add(i + 8 * k))) };
                            *acc = _mm256_fmadd_ps(x, y, *acc);
                        }
                    }
                }
                *vr = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
            }
            // `dot`'s horizontal sum, ((v0+v4) + (v1+v5)) + ((v2+v6) + (v3+v7)), for eight rows
            // at once: halves added pairwise, then three rounds of horizontal adds.
            let t = [0, 2, 4, 6].map(|j| {
                let (a, b) = (v[j], v[j + 1]);
                _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31))
            });
            let h = _mm256_hadd_ps(_mm256_hadd_ps(t[0], t[1]), _mm256_hadd_ps(t[2], t[3]));
            // Lanes hold rows 0, 2, 4, 6, 1, 3, 5, 7.
            let sums = _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            let mut res = [0f32; 8];
            // SAFETY: `res` holds eight floats.
            unsafe { _mm256_storeu_ps(res.as_mut_ptr(), _mm256_mul_ps(sums, sc)) };
            o.copy_from_slice(&res[..o.len()]);
        }
    }

    /// # Safety
    /// AVX2 and FMA required.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax(x: &mut [f32]) {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            // SAFETY: `c` holds eight floats.
            m = _mm256_max_ps(m, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds eight floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        let max = lanes.into_iter().chain(chunks.remainder().iter().copied()).fold(f32::NEG_INFINITY, f32::max);
        let mv = _mm256_set1_ps(max);
        let mut sum = 0f64;
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds eight floats.
            let e = unsafe {
                let e = crate::vmath::avx2::expf8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                e
            };
            let h = _mm_add_ps(_mm256_castps256_ps128(e), _mm256_extractf128_ps(e, 1));
            let s = _mm_add_ps(h, _mm_movehl_ps(h, h));
            sum += _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s))) as f64;
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mut g = [0f32; 8];
            for (gi, v) in g.iter_mut().zip(rest.iter_mut()) {
                *v = crate::vmath::expf(*v - max);
                *gi = *v;
            }
            sum += super::group_sum(&g);
        }
        let inv = _mm256_set1_ps((1.0 / sum) as f32);
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds eight floats.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), inv)) };
        }
        let inv = (1.0 / sum) as f32;
        chunks.into_remainder().iter_mut().for_each(|v| *v *= inv);
    }

    /// See [`super::weighted_sum`] (`bs` a multiple of 8, `out.len()` of 4).
    ///
    /// # Safety
    /// AVX2 and FMA required; the pointer contract of [`super::weighted_sum`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_sum(
        order: ValueOrder,
        first: usize,
        w: &[f32],
        groups: &[*const f32],
        bs: usize,
        out: &mut [f32],
    ) {
        let n = w.len();
        let tail = n % 8;
        // Lanes holding positions below `n` in the last (partial) group of eight.
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        let g = Groups { w, ptrs: groups, bs, first: first / 8, partial: tail != 0, mask };
        match order {
            ValueOrder::Dot => {
                for d0 in (0..out.len()).step_by(2) {
                    // SAFETY: the caller's contract.
                    let acc = unsafe { g.sums::<2, 4>(d0) };
                    for (k, a) in acc.iter().enumerate() {
                        let x = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
                        let t = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
                        let t = _mm_hadd_ps(t, t);
                        out[d0 + k] = _mm_cvtss_f32(_mm_hadd_ps(t, t));
                    }
                }
            }
            ValueOrder::Tiled => {
                for d0 in (0..out.len()).step_by(4) {
                    // SAFETY: the caller's contract.
                    let acc = unsafe { g.sums::<4, 1>(d0) };
                    for (k, a) in acc.iter().enumerate() {
                        let t = _mm_add_ps(_mm256_castps256_ps128(a[0]), _mm256_extractf128_ps(a[0], 1));
                        let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
                        out[d0 + k] = _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
                    }
                }
            }
        }
    }

    /// The positions of one weighted sum, in groups of eight.
    struct Groups<'a> {
        w: &'a [f32],
        /// Dimension 0 of each group (dimension d is d·bs further).
        ptrs: &'a [*const f32],
        bs: usize,
        /// First group with a non-zero weight.
        first: usize,
        /// Whether the last group is partial (masked).
        partial: bool,
        mask: __m256i,
    }

    impl Groups<'_> {
        /// Accumulators of `D` dimensions from `d0`: group `c` feeds accumulator `c mod A`
        /// (unrolled by `A`, so every accumulator stays in a register).
        ///
        /// # Safety
        /// AVX2 and FMA required; the pointer contract of [`super::weighted_sum`].
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn sums<const D: usize, const A: usize>(&self, d0: usize) -> [[__m256; A]; D] {
            let mut acc = [[_mm256_setzero_ps(); A]; D];
            let n = self.ptrs.len();
            let last = n - 1;
            for q in self.first / A..n.div_ceil(A) {
                for j in 0..A {
                    let c = q * A + j;
                    if c < self.first || c > last {
                        continue;
                    }
                    // SAFETY: group c's positions are below w.len() but for the masked lanes of
                    // a partial last group; its dimensions d0..d0+D are in its block.
                    unsafe {
                        let vp = self.ptrs[c].add(d0 * self.bs);
                        let wp = self.w.as_ptr().add(8 * c);
                        if self.partial && c == last {
                            let wv = _mm256_maskload_ps(wp, self.mask);
                            for (k, a) in acc.iter_mut().enumerate() {
                                let v = _mm256_maskload_ps(vp.add(k * self.bs), self.mask);
                                a[j] = _mm256_fmadd_ps(wv, v, a[j]);
                            }
                        } else {
                            let wv = _mm256_loadu_ps(wp);
                            for (k, a) in acc.iter_mut().enumerate() {
                                let v = _mm256_loadu_ps(vp.add(k * self.bs));
                                a[j] = _mm256_fmadd_ps(wv, v, a[j]);
                            }
                        }
                    }
                }
            }
            acc
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_and_scalar_agree_bit_for_bit() {
        let a: Vec<f32> = (0..64).map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.013).collect();
        let b: Vec<f32> = (0..64).map(|i| ((i * 11 % 23) as f32 - 11.0) * 0.07).collect();
        let isa = crate::quant::detect_isa();
        assert_eq!(dot(isa, &a, &b).to_bits(), dot(Isa::Scalar, &a, &b).to_bits());
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        assert!((dot(isa, &a, &b) as f64 - naive).abs() < 1e-5);
        // 45 positions of 16-wide values in blocks of 16 positions, stored transposed per block.
        let value = |p: usize, d: usize| ((p * 16 + d) % 7) as f32 * 0.37 - 1.1;
        let data: Vec<f32> = (0..3 * 16 * 16).map(|i| value(i / 256 * 16 + i % 16, i % 256 / 16)).collect();
        let blocks: Vec<*const f32> = (0..3).map(|b| data[b * 256..].as_ptr()).collect();
        let (mut o1, mut o2) = (vec![0f32; 16], vec![0f32; 16]);
        for first in [0, 13] {
            let w: Vec<f32> = (0..45).map(|i| if i < first { 0.0 } else { 1.0 / (i as f32 + 1.0) }).collect();
            for order in [ValueOrder::Dot, ValueOrder::Tiled] {
                // SAFETY: three blocks of 16 × 16 floats.
                unsafe {
                    weighted_sum(isa, order, first, &w, &blocks, 16, &mut o1, &mut Vec::new());
                    weighted_sum(Isa::Scalar, order, first, &w, &blocks, 16, &mut o2, &mut Vec::new());
                }
                assert_eq!(o1, o2, "{order:?}, first {first}");
                for (d, o) in o1.iter().enumerate() {
                    let naive: f32 = (0..45).map(|p| w[p] * value(p, d)).sum();
                    assert!((o - naive).abs() < 1e-4, "{order:?} {d}: {o} vs {naive}");
                }
            }
        }
        let bits = |o: &[f32]| o.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for n in [1usize, 7, 8, 45, 130] {
            let q: Vec<f32> = (0..64).map(|i| ((i * 29 % 13) as f32 - 6.0) * 0.05).collect();
            let keys: Vec<f32> = (0..n * 64).map(|i| ((i * 11 % 23) as f32 - 11.0) * 0.07).collect();
            let ptrs: Vec<*const f32> = (0..n).map(|p| keys[p * 64..].as_ptr()).collect();
            let (mut s1, mut s2) = (vec![0f32; n], vec![0f32; n]);
            // SAFETY: every pointer has 64 floats behind it.
            unsafe {
                scores(isa, &q, &ptrs, 0.125, &mut s1);
                scores(Isa::Scalar, &q, &ptrs, 0.125, &mut s2);
            }
            assert_eq!(bits(&s1), bits(&s2), "scores of {n} rows");
            let one_by_one: Vec<f32> = (0..n).map(|p| dot(isa, &q, &keys[p * 64..(p + 1) * 64]) * 0.125).collect();
            assert_eq!(bits(&s1), bits(&one_by_one), "scores of {n} rows vs dot");
            let (mut p1, mut p2) = (s1.clone(), s1.clone());
            softmax(isa, &mut p1);
            softmax(Isa::Scalar, &mut p2);
            assert_eq!(bits(&p1), bits(&p2), "softmax of {n}");
            assert!((p1.iter().map(|v| *v as f64).sum::<f64>() - 1.0).abs() < 1e-5);
        }
    }
}
