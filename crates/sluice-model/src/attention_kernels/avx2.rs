//! The AVX2 (+FMA, F16C) forms of the attention kernels: the same sums in the same orders as
//! the portable code in the parent module, bit for bit, with accumulators in registers.

use super::SumOrder;
use std::arch::x86_64::*;

/// Eight cache elements from element `i` of the run at `p`, as floats.
///
/// # Safety
/// AVX2/F16C required; `p` addresses `i + 8` elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load8<const HALF: bool>(p: *const u8, i: usize) -> __m256 {
    // SAFETY: the caller's contract.
    unsafe {
        if HALF {
            _mm256_cvtph_ps(_mm_loadu_si128((p as *const u16).add(i) as *const __m128i))
        } else {
            _mm256_loadu_ps((p as *const f32).add(i))
        }
    }
}

/// `vec_dot`'s horizontal sum of one row's four accumulators: (s0+s2) + (s1+s3), then the
/// lane tree.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce_dot(s: &[__m256; 4]) -> f32 {
    let x = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
    let t = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    let t = _mm_hadd_ps(t, t);
    _mm_cvtss_f32(_mm_hadd_ps(t, t))
}

/// The tiled product's horizontal sum of one accumulator.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn reduce_tiled(a: __m256) -> f32 {
    let t = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
}

/// [`super::scores`] in `Dot` order. A 64- or 128-wide query stays in registers; eight rows'
/// lane trees are reduced together.
///
/// # Safety
/// AVX2/FMA/F16C required; `q.len()` a multiple of 32; every row holds `q.len()` elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores_dot<const HALF: bool>(q: &[f32], rows: &[*const u8], scale: f32, out: &mut [f32]) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match q.len() {
            64 => scores_with::<2, HALF>(q, rows, scale, out),
            128 => scores_with::<4, HALF>(q, rows, scale, out),
            _ => scores_with::<0, HALF>(q, rows, scale, out),
        }
    }
}

/// [`scores_dot`] with the query held in registers when it is `32·S` wide (`S > 0`), read
/// from memory for every row otherwise.
///
/// # Safety
/// As [`scores_dot`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_with<const S: usize, const HALF: bool>(q: &[f32], rows: &[*const u8], scale: f32, out: &mut [f32]) {
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
                        // SAFETY: the row holds 32·S elements (caller contract).
                        let y = unsafe { load8::<HALF>(r, 32 * i + 8 * k) };
                        *acc = _mm256_fmadd_ps(c[k], y, *acc);
                    }
                }
            } else {
                for i in (0..q.len()).step_by(32) {
                    for (k, acc) in s.iter_mut().enumerate() {
                        // SAFETY: i + 8k + 8 <= len for the query and the row (caller contract).
                        let (x, y) = unsafe { (_mm256_loadu_ps(qp.add(i + 8 * k)), load8::<HALF>(r, i + 8 * k)) };
                        *acc = _mm256_fmadd_ps(x, y, *acc);
                    }
                }
            }
            *vr = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
        }
        let mut res = [0f32; 8];
        // SAFETY: `res` holds eight floats.
        unsafe { _mm256_storeu_ps(res.as_mut_ptr(), _mm256_mul_ps(reduce8_dot(&v), sc)) };
        o.copy_from_slice(&res[..o.len()]);
    }
}

/// `dot`'s horizontal sum, ((v0+v4) + (v1+v5)) + ((v2+v6) + (v3+v7)), of eight rows' lane
/// vectors at once (halves added pairwise, then three rounds of horizontal adds): row `r`'s
/// sum in lane `r`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn reduce8_dot(v: &[__m256; 8]) -> __m256 {
    let t = halves8(v);
    in_order(_mm256_hadd_ps(_mm256_hadd_ps(t[0], t[1]), _mm256_hadd_ps(t[2], t[3])))
}

/// The first step of both eight-vector reductions: each vector's lanes `l + (l+4)`, `v[2i]`'s
/// in the low 128 bits of the result's `i`-th vector, `v[2i+1]`'s in the high.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn halves8(v: &[__m256; 8]) -> [__m256; 4] {
    [0, 2, 4, 6].map(|j| {
        let (a, b) = (v[j], v[j + 1]);
        _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31))
    })
}

/// Lanes holding vectors 0, 2, 4, 6, 1, 3, 5, 7 (the reductions' last step) put in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn in_order(h: __m256) -> __m256 {
    _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// [`reduce_tiled`] of eight vectors at once: lane `r` is `v[r]`'s sum, bit-equal (the same
/// additions: halves, then lanes 0+2 and 1+3, then those two).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn reduce8_tiled(v: &[__m256; 8]) -> __m256 {
    let t = halves8(v);
    // (a0+a2, a1+a3) of two vectors per 128-bit half.
    let pair = |x: __m256, y: __m256| _mm256_add_ps(_mm256_shuffle_ps::<0b01_00_01_00>(x, y), _mm256_shuffle_ps::<0b11_10_11_10>(x, y));
    in_order(_mm256_hadd_ps(pair(t[0], t[1]), pair(t[2], t[3])))
}

/// [`scores_dot`] for `H` heads (`q`: `H × dim`, `out`: `H × rows`): each key vector is
/// loaded once for all heads (whose queries are read from memory: they would not all fit in
/// registers).
///
/// # Safety
/// As [`scores_dot`], with `dim` the width of one head.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop, reason = "accumulators indexed by head and lane together")]
pub unsafe fn scores_dot_heads<const H: usize, const HALF: bool>(q: &[f32], rows: &[*const u8], scale: f32, out: &mut [f32]) {
    let (dim, n) = (q.len() / H, rows.len());
    let qp = q.as_ptr();
    let sc = _mm256_set1_ps(scale);
    for (c, chunk) in rows.chunks(8).enumerate() {
        let mut v = [[_mm256_setzero_ps(); 8]; H];
        for (ri, &r) in chunk.iter().enumerate() {
            let mut s = [[_mm256_setzero_ps(); 4]; H];
            for i in (0..dim).step_by(32) {
                for k in 0..4 {
                    // SAFETY: i + 8k + 8 <= dim for the row and every head's query (caller
                    // contract).
                    let y = unsafe { load8::<HALF>(r, i + 8 * k) };
                    for h in 0..H {
                        let x = unsafe { _mm256_loadu_ps(qp.add(h * dim + i + 8 * k)) };
                        s[h][k] = _mm256_fmadd_ps(x, y, s[h][k]);
                    }
                }
            }
            for h in 0..H {
                v[h][ri] = _mm256_add_ps(_mm256_add_ps(s[h][0], s[h][2]), _mm256_add_ps(s[h][1], s[h][3]));
            }
        }
        for h in 0..H {
            let mut res = [0f32; 8];
            // SAFETY: `res` holds eight floats.
            unsafe { _mm256_storeu_ps(res.as_mut_ptr(), _mm256_mul_ps(reduce8_dot(&v[h]), sc)) };
            let o = &mut out[h * n + 8 * c..h * n + (8 * c + 8).min(n)];
            o.copy_from_slice(&res[..o.len()]);
        }
    }
}

/// [`super::scores`] in `Tiled` order for `H` heads (`q`: `H × dim`, `out`: `H × rows`): one
/// accumulator per row and head, `R` rows at a time (their chains of fused multiply-adds
/// interleave instead of waiting on each other; each key vector is loaded once for all
/// heads).
///
/// # Safety
/// As [`scores_dot`], with `dim` the width of one head.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores_tiled<const H: usize, const R: usize, const HALF: bool>(q: &[f32], rows: &[*const u8], scale: f32, out: &mut [f32]) {
    let (dim, n) = (q.len() / H, rows.len());
    let qp = q.as_ptr();
    for (c, chunk) in rows.chunks(R).enumerate() {
        let mut acc = [[_mm256_setzero_ps(); R]; H];
        for i in (0..dim).step_by(8) {
            // SAFETY: i + 8 <= dim for every head's query.
            let x: [__m256; H] = std::array::from_fn(|h| unsafe { _mm256_loadu_ps(qp.add(h * dim + i)) });
            for (j, &r) in chunk.iter().enumerate() {
                // SAFETY: every row holds dim elements (caller contract).
                let y = unsafe { load8::<HALF>(r, i) };
                for (a, x) in acc.iter_mut().zip(&x) {
                    a[j] = _mm256_fmadd_ps(*x, y, a[j]);
                }
            }
        }
        for (h, a) in acc.iter().enumerate() {
            for (j, a) in a.iter().enumerate().take(chunk.len()) {
                out[h * n + c * R + j] = reduce_tiled(*a) * scale;
            }
        }
    }
}

/// # Safety
/// AVX2 and FMA required.
#[target_feature(enable = "avx2,fma,f16c")]
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

/// [`super::weighted_sum`] for `H` heads (`w`: `H × n` weights, `out`: `H × dim`), `D`
/// dimensions at a time for all of them.
///
/// # Safety
/// AVX2/FMA/F16C required; `groups` holds the first element of each group of eight
/// positions, every group having `dim` dimensions `bs` elements apart, all eight positions
/// readable (a partial last group's included: blocks hold whole groups); `dim` a multiple
/// of 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn weighted_sum<const H: usize, const HALF: bool>(
    order: SumOrder,
    first: usize,
    w: &[f32],
    groups: &[*const u8],
    bs: usize,
    out: &mut [f32],
) {
    let (n, dim) = (w.len() / H, out.len() / H);
    let tail = n % 8;
    // A partial last group's weights, zero-padded once (not re-read past each head's end per
    // dimension).
    let w_tail: [[f32; 8]; H] = std::array::from_fn(|h| {
        let mut t = [0f32; 8];
        t[..tail].copy_from_slice(&w[h * n + n - tail..(h + 1) * n]);
        t
    });
    let g = Groups::<H> { w: std::array::from_fn(|h| &w[h * n..(h + 1) * n]), w_tail, ptrs: groups, bs, first: first / 8, tail };
    // SAFETY (both arms): the caller's contract.
    unsafe {
        match order {
            // Four accumulators per dimension and head (vec_dot's lanes): two dimensions
            // for one head, one for two or three.
            SumOrder::Dot if H == 1 => g.each::<2, 4, HALF>(dim, out, |a| reduce_dot(a)),
            SumOrder::Dot => g.each::<1, 4, HALF>(dim, out, |a| reduce_dot(a)),
            SumOrder::Tiled if H == 1 => g.each::<8, 1, HALF>(dim, out, |a| reduce_tiled(a[0])),
            SumOrder::Tiled if H == 2 => g.each::<4, 1, HALF>(dim, out, |a| reduce_tiled(a[0])),
            SumOrder::Tiled => g.each::<2, 1, HALF>(dim, out, |a| reduce_tiled(a[0])),
        }
    }
}

/// The positions of one weighted sum per head, in groups of eight.
struct Groups<'a, const H: usize> {
    w: [&'a [f32]; H],
    /// The weights of a partial last group, zeros after them.
    w_tail: [[f32; 8]; H],
    /// Dimension 0 of each group (dimension d is d·bs elements further).
    ptrs: &'a [*const u8],
    bs: usize,
    /// First group with a non-zero weight.
    first: usize,
    /// Positions in the last group when it is partial (0 when it is whole).
    tail: usize,
}

impl<const H: usize> Groups<'_, H> {
    /// Every output, `D` dimensions at a time: head `h`'s dimension `d` into
    /// `out[h·dim + d]`, reduced by `reduce`.
    ///
    /// # Safety
    /// As [`Self::sums`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn each<const D: usize, const A: usize, const HALF: bool>(&self, dim: usize, out: &mut [f32], reduce: impl Fn(&[__m256; A]) -> f32) {
        for d0 in (0..dim).step_by(D) {
            // SAFETY: the caller's contract.
            let acc = unsafe { self.sums::<D, A, HALF>(d0) };
            for (h, acc) in acc.iter().enumerate() {
                for (k, a) in acc.iter().enumerate() {
                    out[h * dim + d0 + k] = reduce(a);
                }
            }
        }
    }

    /// Accumulators of `D` dimensions from `d0` for every head: group `c` feeds accumulator
    /// `c mod A` (unrolled by `A`, so every accumulator stays in a register). Each value
    /// vector is loaded once for all heads.
    ///
    /// # Safety
    /// AVX2/FMA/F16C required; the pointer contract of [`super::weighted_sum`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop, reason = "accumulators indexed by head, dimension and lane together")]
    unsafe fn sums<const D: usize, const A: usize, const HALF: bool>(&self, d0: usize) -> [[[__m256; A]; D]; H] {
        let mut acc = [[[_mm256_setzero_ps(); A]; D]; H];
        let n = self.ptrs.len();
        // Groups read whole (all but a partial last one), in runs of A from a multiple of A.
        let whole = if self.tail != 0 { n - 1 } else { n };
        let mut q = self.first / A;
        // SAFETY (every block below): group c < n has its dimensions d0..d0+D in its block
        // and its positions below each head's weight count, but for the `tail` of a partial
        // last group.
        while (q + 1) * A <= whole {
            for j in 0..A {
                let c = q * A + j;
                if c >= self.first {
                    unsafe {
                        let vp = *self.ptrs.get_unchecked(c);
                        let wv: [__m256; H] = std::array::from_fn(|h| _mm256_loadu_ps(self.w[h].as_ptr().add(8 * c)));
                        for k in 0..D {
                            let v = load8::<HALF>(vp, (d0 + k) * self.bs);
                            for h in 0..H {
                                acc[h][k][j] = _mm256_fmadd_ps(wv[h], v, acc[h][k][j]);
                            }
                        }
                    }
                }
            }
            q += 1;
        }
        for j in 0..A {
            let c = q * A + j;
            if c < self.first || c >= n {
                continue;
            }
            unsafe {
                let vp = *self.ptrs.get_unchecked(c);
                let part = c >= whole;
                let wv: [__m256; H] = std::array::from_fn(|h| {
                    if part { _mm256_loadu_ps(self.w_tail[h].as_ptr()) } else { _mm256_loadu_ps(self.w[h].as_ptr().add(8 * c)) }
                });
                // A partial group's positions past the last are read (they lie in its block) and
                // zeroed whatever they hold, so they add exact zeros, as if never read.
                let keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                    _mm256_set1_epi32(if part { self.tail as i32 } else { 8 }),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                ));
                for k in 0..D {
                    let at = (d0 + k) * self.bs;
                    let v = _mm256_and_ps(load8::<HALF>(vp, at), keep);
                    for h in 0..H {
                        acc[h][k][j] = _mm256_fmadd_ps(wv[h], v, acc[h][k][j]);
                    }
                }
            }
        }
        acc
    }
}
