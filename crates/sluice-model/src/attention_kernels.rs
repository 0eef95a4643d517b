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

/// `out[d] = Σ_{p ≥ first} w[p] · v(p)[d]` where `v(p)` is the `d`-wide row of position `p`,
/// lane-ordered by absolute position as `order` says. `scratch` holds `lanes × out.len()` floats.
pub fn weighted_sum(
    isa: Isa,
    order: ValueOrder,
    first: usize,
    w: &[f32],
    v: impl Fn(usize) -> *const f32,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let d = out.len();
    let lanes = order.lanes();
    scratch.clear();
    scratch.resize(lanes * d, 0.0);
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() && d.is_multiple_of(8) {
        for (p, &wp) in w.iter().enumerate().skip(first) {
            let acc = &mut scratch[(p % lanes) * d..(p % lanes + 1) * d];
            // SAFETY: AVX2/FMA detected; `v(p)` points at `d` readable floats (caller contract).
            unsafe { avx2::axpy(acc, wp, v(p)) };
        }
        return finish(order, scratch, out);
    }
    let _ = isa;
    for (p, &wp) in w.iter().enumerate().skip(first) {
        let acc = &mut scratch[(p % lanes) * d..(p % lanes + 1) * d];
        // SAFETY: `v(p)` points at `d` readable floats (caller contract).
        let row = unsafe { std::slice::from_raw_parts(v(p), d) };
        for (a, x) in acc.iter_mut().zip(row) {
            *a = wp.mul_add(*x, *a);
        }
    }
    finish(order, scratch, out)
}

fn finish(order: ValueOrder, scratch: &[f32], out: &mut [f32]) {
    let d = out.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = match order {
            ValueOrder::Dot => {
                let mut lanes = [0f32; LANES];
                for (l, x) in lanes.iter_mut().enumerate() {
                    *x = scratch[l * d + i];
                }
                reduce_lanes(&lanes)
            }
            ValueOrder::Tiled => {
                // Its horizontal sum: halves added lane by lane, then (0+2) + (1+3).
                let a = |l: usize| scratch[l * d + i] + scratch[(l + 4) * d + i];
                (a(0) + a(2)) + (a(1) + a(3))
            }
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
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
        let qp = q.as_ptr();
        let sc = _mm256_set1_ps(scale);
        for (chunk, o) in rows.chunks(8).zip(out.chunks_mut(8)) {
            // Per row, the 8-lane vector `dot` reduces from: (s0 + s2) + (s1 + s3).
            let mut v = [_mm256_setzero_ps(); 8];
            for (vr, &r) in v.iter_mut().zip(chunk) {
                let mut s = [_mm256_setzero_ps(); 4];
                for i in (0..q.len()).step_by(32) {
                    for (k, acc) in s.iter_mut().enumerate() {
                        // SAFETY: i + 8k + 8 <= len for the query and the row (caller contract).
                        let (x, y) = unsafe { (_mm256_loadu_ps(qp.add(i + 8 * k)), _mm256_loadu_ps(r.add(i + 8 * k))) };
                        *acc = _mm256_fmadd_ps(x, y, *acc);
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

    /// `acc += w * x` over `acc.len()` floats (a multiple of 8).
    ///
    /// # Safety
    /// AVX2 and FMA required; `x` points at `acc.len()` readable floats.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(acc: &mut [f32], w: f32, x: *const f32) {
        let wv = _mm256_set1_ps(w);
        let pa = acc.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= acc.len() {
            // SAFETY: i + 8 <= len for both buffers.
            unsafe {
                let a = _mm256_loadu_ps(pa.add(i));
                _mm256_storeu_ps(pa.add(i), _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.add(i)), a));
            }
            i += 8;
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
        let w: Vec<f32> = (0..45).map(|i| 1.0 / (i as f32 + 1.0)).collect();
        let rows: Vec<f32> = (0..45 * 16).map(|i| (i % 7) as f32 - 3.0).collect();
        let (mut o1, mut o2, mut s) = (vec![0f32; 16], vec![0f32; 16], Vec::new());
        for order in [ValueOrder::Dot, ValueOrder::Tiled] {
            weighted_sum(isa, order, 0, &w, |p| rows[p * 16..].as_ptr(), &mut o1, &mut s);
            weighted_sum(Isa::Scalar, order, 0, &w, |p| rows[p * 16..].as_ptr(), &mut o2, &mut s);
            assert_eq!(o1, o2);
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
        for d in 0..16 {
            let naive: f32 = (0..45).map(|p| w[p] * rows[p * 16 + d]).sum();
            assert!((o1[d] - naive).abs() < 1e-4);
        }
    }
}
