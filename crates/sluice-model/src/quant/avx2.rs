//! AVX2 + FMA + F16C dot-product kernels (same arithmetic as `scalar`, integer sums exact).
//! Every function here is `unsafe` because it requires those CPU features; callers check them
//! once through `detect_isa`.

use std::arch::x86_64::*;

use super::GgmlType;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_load(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 32 nibbles of 16 bytes as 32 bytes in element order (low nibbles, then high nibbles).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller passes a pointer to 16 readable bytes.
    let tmp = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Sum of unsigned(x) * signed(y) over 32 byte pairs, as 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_us8(x: __m256i, y: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(x, y);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

/// Sum of signed(x) * signed(y) over 32 byte pairs, as 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_i8(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    mul_sum_us8(ax, sy)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32(p: *const u8) -> __m256i {
    // SAFETY: the caller passes a pointer to 32 readable bytes.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// Dot product with an AVX2 kernel, or `None` when this type has none (the caller then uses the
/// scalar kernel).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. `w` and `a` must hold `n` elements encoded as `wt`
/// and `wt.dot_type()` (the caller's debug assertions check this).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot(wt: GgmlType, n: usize, w: &[u8], a: &[u8]) -> Option<f32> {
    let nb = n / 32;
    // Checked here so the pointer arithmetic below stays inside both slices.
    if w.len() < wt.row_bytes(n) || a.len() < wt.dot_type().row_bytes(n) {
        return None;
    }
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    Some(match wt {
        GgmlType::Q4_1 => {
            let mut acc = _mm256_setzero_ps();
            let mut summs = 0f32;
            for i in 0..nb {
                let (wo, ao) = (i * 20, i * 36);
                let dw = f16_load(w, wo);
                let da = f16_load(a, ao);
                summs += f16_load(w, wo + 2) * f16_load(a, ao + 2);
                // SAFETY: block i of both rows lies inside the slices (length checked above).
                let (x, y) = unsafe { (nibbles(wp.add(wo + 4)), load32(ap.add(ao + 4))) };
                acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), mul_sum_us8(x, y), acc);
            }
            hsum(acc) + summs
        }
        GgmlType::Q4_0 => {
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                let (wo, ao) = (i * 18, i * 34);
                let d = f16_load(w, wo) * f16_load(a, ao);
                // SAFETY: as above.
                let (x, y) = unsafe { (nibbles(wp.add(wo + 2)), load32(ap.add(ao + 2))) };
                let x = _mm256_sub_epi8(x, _mm256_set1_epi8(8));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_i8(x, y), acc);
            }
            hsum(acc)
        }
        GgmlType::Q8_0 => {
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                let o = i * 34;
                let d = f16_load(w, o) * f16_load(a, o);
                // SAFETY: as above.
                let (x, y) = unsafe { (load32(wp.add(o + 2)), load32(ap.add(o + 2))) };
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_i8(x, y), acc);
            }
            hsum(acc)
        }
        _ => return None,
    })
}
