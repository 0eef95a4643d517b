//! The AVX-512 forms of the attention kernels. A 512-bit register
//! holds 16 of the reference's 32 lanes, so two registers carry a whole `vec_dot` accumulator
//! set and 32 registers keep a group's queries in place: about half the instructions of the
//! AVX2 forms, which reload the queries for every key and reduce every output on its own. The
//! same sums in the same orders as the portable code, bit for bit.

use std::arch::x86_64::*;

use super::avx2::{load8, reduce8_dot, reduce8_tiled};

/// Sixteen cache elements from element `i` of the run at `p`, as floats.
///
/// # Safety
/// AVX-512 F required; `p` addresses `i + 16` elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn load16<const HALF: bool>(p: *const u8, i: usize) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe {
        if HALF {
            _mm512_cvtph_ps(_mm256_loadu_si256((p as *const u16).add(i) as *const __m256i))
        } else {
            _mm512_loadu_ps((p as *const f32).add(i))
        }
    }
}

/// A position's two 16-lane accumulators (lanes `0..16` and `16..32` of `vec_dot`'s 32) folded
/// to the 8-lane vector its tree starts from: (s0 + s2) + (s1 + s3), as the AVX2 form adds them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
fn fold(a: __m512, b: __m512) -> __m256 {
    add_halves(_mm512_add_ps(a, b))
}

/// Lanes `l` and `l + 8` of `z` added.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub(super) fn add_halves(z: __m512) -> __m256 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(z)));
    _mm256_add_ps(_mm512_castps512_ps256(z), hi)
}

/// [`super::scores`] in `Dot` order for `H` heads of width `16·S` (`q`: `H × 16S`, `out`:
/// `H × rows`), the queries held in registers.
///
/// # Safety
/// AVX-512 F/BW/VL, AVX2, FMA and F16C required; `S` even; every row holds `16·S` elements;
/// `H · S <= 24`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub unsafe fn scores_dot<const H: usize, const S: usize, const HALF: bool>(q: &[f32], rows: &[*const u8], scale: f32, out: &mut [f32]) {
    let n = rows.len();
    debug_assert_eq!(q.len(), H * 16 * S);
    // SAFETY: q holds H · 16S floats.
    let qr: [[__m512; S]; H] = std::array::from_fn(|h| std::array::from_fn(|k| unsafe { _mm512_loadu_ps(q.as_ptr().add((h * S + k) * 16)) }));
    let sc = _mm256_set1_ps(scale);
    for (c, chunk) in rows.chunks(8).enumerate() {
        let mut v = [[_mm256_setzero_ps(); 8]; H];
        for (ri, &r) in chunk.iter().enumerate() {
            // Elements 16k..16k+16 feed lanes 16(k mod 2).. of the 32.
            let mut acc = [[_mm512_setzero_ps(); 2]; H];
            for k in 0..S {
                // SAFETY: the row holds 16S elements (caller contract).
                let y = unsafe { load16::<HALF>(r, 16 * k) };
                for h in 0..H {
                    acc[h][k % 2] = _mm512_fmadd_ps(qr[h][k], y, acc[h][k % 2]);
                }
            }
            for h in 0..H {
                v[h][ri] = fold(acc[h][0], acc[h][1]);
            }
        }
        for (h, v) in v.iter().enumerate() {
            let mut res = [0f32; 8];
            // SAFETY: `res` holds eight floats.
            unsafe { _mm256_storeu_ps(res.as_mut_ptr(), _mm256_mul_ps(reduce8_dot(v), sc)) };
            let o = &mut out[h * n + 8 * c..h * n + (8 * c + 8).min(n)];
            o.copy_from_slice(&res[..o.len()]);
        }
    }
}

/// [`super::weighted_sum`] in `Dot` order for `H` heads (`w`: `H × n` weights, `out`:
/// `H × dim`), `D` dimensions at a time for all of them, eight dimensions' trees reduced
/// together. `groups[g]` is dimension 0 of positions `16g..16g+16`, dimension `d` being
/// `d·bs` elements further (all sixteen positions in one block).
///
/// # Safety
/// AVX-512 F/BW/VL, AVX2, FMA and F16C required; `dim` a multiple of 8 and of `D`, `D` dividing
/// 8; every group's sixteen positions readable for every dimension (a partial last group's
/// included: blocks hold whole groups).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub unsafe fn weighted_sum_dot<const H: usize, const D: usize, const HALF: bool>(
    first: usize,
    w: &[f32],
    groups: &[*const u8],
    bs: usize,
    out: &mut [f32],
) {
    let (n, dim) = (w.len() / H, out.len() / H);
    let (whole, tail) = (n / 16, n % 16);
    // Groups wholly before the window add nothing (their weights are zero): skipped.
    let g0 = first / 16;
    for d0 in (0..dim).step_by(8) {
        let mut x = [[_mm256_setzero_ps(); 8]; H];
        for dd in (0..8).step_by(D) {
            let mut acc = [[[_mm512_setzero_ps(); 2]; D]; H];
            // Positions 16g..16g+16 feed lanes 16(g mod 2).. of the 32 (`$par`: g mod 2, spelled
            // out so every accumulator index is a constant and stays in a register).
            macro_rules! group {
                ($g:expr, $par:literal, $m:expr) => {
                    // SAFETY: group g < groups.len() has dimensions d0+dd..d0+dd+D of its sixteen
                    // positions in its block; the weights are read (and the values kept) only
                    // for positions below n, the rest zeroed whatever they hold.
                    unsafe {
                        let (g, m): (usize, __mmask16) = ($g, $m);
                        let vp = *groups.get_unchecked(g);
                        let wv: [__m512; H] = std::array::from_fn(|h| _mm512_maskz_loadu_ps(m, w.as_ptr().add(h * n + 16 * g)));
                        for k in 0..D {
                            let v = _mm512_maskz_mov_ps(m, load16::<HALF>(vp, (d0 + dd + k) * bs));
                            for h in 0..H {
                                acc[h][k][$par] = _mm512_fmadd_ps(wv[h], v, acc[h][k][$par]);
                            }
                        }
                    }
                };
            }
            let mut g = g0;
            if g % 2 == 1 && g < whole {
                group!(g, 1, 0xFFFF);
                g += 1;
            }
            while g + 2 <= whole {
                group!(g, 0, 0xFFFF);
                group!(g + 1, 1, 0xFFFF);
                g += 2;
            }
            if g < whole {
                group!(g, 0, 0xFFFF);
            }
            if tail != 0 {
                let m = (1u16 << tail) - 1;
                if whole % 2 == 0 {
                    group!(whole, 0, m);
                } else {
                    group!(whole, 1, m);
                }
            }
            for h in 0..H {
                for k in 0..D {
                    x[h][dd + k] = fold(acc[h][k][0], acc[h][k][1]);
                }
            }
        }
        for (h, x) in x.iter().enumerate() {
            // SAFETY: out holds H · dim floats and d0 + 8 <= dim.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(h * dim + d0), reduce8_dot(x)) };
        }
    }
}

/// [`super::scores`] in `Tiled` order (a prompt token's) for `H` heads (`q`: `H × dim`, `out`:
/// `H × rows`): one 8-lane accumulator per row and head as the AVX2 form keeps, but eight rows
/// at a time (AVX-512's 32 registers hold the 24 accumulators of three heads), their trees
/// reduced together rather than each on its own.
///
/// # Safety
/// AVX-512 F/VL, AVX2, FMA and F16C required; `dim` a multiple of 8; every row holds `dim`
/// elements.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub unsafe fn scores_tiled<const H: usize, const HALF: bool>(q: &[f32], rows: &[*const u8], scale: f32, out: &mut [f32]) {
    let (dim, n) = (q.len() / H, rows.len());
    let (qp, sc) = (q.as_ptr(), _mm256_set1_ps(scale));
    for (c, chunk) in rows.chunks(8).enumerate() {
        // A short last chunk repeats its last row (those sums are dropped).
        let r: [*const u8; 8] = std::array::from_fn(|j| chunk[j.min(chunk.len() - 1)]);
        let mut acc = [[_mm256_setzero_ps(); 8]; H];
        for i in (0..dim).step_by(8) {
            // SAFETY: i + 8 <= dim for every head's query and every row (caller contract).
            unsafe {
                let x: [__m256; H] = std::array::from_fn(|h| _mm256_loadu_ps(qp.add(h * dim + i)));
                for (j, &r) in r.iter().enumerate() {
                    let y = load8::<HALF>(r, i);
                    for (a, x) in acc.iter_mut().zip(&x) {
                        a[j] = _mm256_fmadd_ps(*x, y, a[j]);
                    }
                }
            }
        }
        for (h, a) in acc.iter().enumerate() {
            let mut res = [0f32; 8];
            // SAFETY: `res` holds eight floats.
            unsafe { _mm256_storeu_ps(res.as_mut_ptr(), _mm256_mul_ps(reduce8_tiled(a), sc)) };
            out[h * n + 8 * c..h * n + 8 * c + chunk.len()].copy_from_slice(&res[..chunk.len()]);
        }
    }
}

/// [`super::weighted_sum`] in `Tiled` order for `H` heads (`w`: `H × n` weights, `out`:
/// `H × dim`): one 8-lane accumulator per output, as the AVX2 form keeps, but eight dimensions
/// of every head at a time (24 chains of multiply-adds for three heads instead of six), their
/// trees reduced together. `groups[g]` is dimension 0 of positions `8g..8g+8`, dimension `d`
/// being `d·bs` elements further; groups below `first / 8` are skipped.
///
/// # Safety
/// AVX-512 F/VL, AVX2, FMA and F16C required; `dim` a multiple of 8; every group's eight
/// positions readable for every dimension (a partial last group's included).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub unsafe fn weighted_sum_tiled<const H: usize, const HALF: bool>(first: usize, w: &[f32], groups: &[*const u8], bs: usize, out: &mut [f32]) {
    let (n, dim) = (w.len() / H, out.len() / H);
    let (whole, tail) = (n / 8, n % 8);
    // A partial last group: its weights zero-padded, its values past the last position zeroed
    // whatever they hold (so they add exact zeros).
    let w_tail: [[f32; 8]; H] = std::array::from_fn(|h| {
        let mut t = [0f32; 8];
        t[..tail].copy_from_slice(&w[h * n + n - tail..(h + 1) * n]);
        t
    });
    let keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(tail as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    for d0 in (0..dim).step_by(8) {
        let mut acc = [[_mm256_setzero_ps(); 8]; H];
        // SAFETY (both loops): group g < groups.len() has dimensions d0..d0+8 of its eight
        // positions in its block; the weights are read below n only.
        for g in first / 8..whole {
            unsafe {
                let vp = *groups.get_unchecked(g);
                let wv: [__m256; H] = std::array::from_fn(|h| _mm256_loadu_ps(w.as_ptr().add(h * n + 8 * g)));
                for k in 0..8 {
                    let v = load8::<HALF>(vp, (d0 + k) * bs);
                    for (a, wv) in acc.iter_mut().zip(&wv) {
                        a[k] = _mm256_fmadd_ps(*wv, v, a[k]);
                    }
                }
            }
        }
        if tail != 0 {
            unsafe {
                let vp = *groups.get_unchecked(whole);
                let wv: [__m256; H] = std::array::from_fn(|h| _mm256_loadu_ps(w_tail[h].as_ptr()));
                for k in 0..8 {
                    let v = _mm256_and_ps(load8::<HALF>(vp, (d0 + k) * bs), keep);
                    for (a, wv) in acc.iter_mut().zip(&wv) {
                        a[k] = _mm256_fmadd_ps(*wv, v, a[k]);
                    }
                }
            }
        }
        for (h, a) in acc.iter().enumerate() {
            // SAFETY: out holds H · dim floats and d0 + 8 <= dim.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(h * dim + d0), reduce8_tiled(a)) };
        }
    }
}
