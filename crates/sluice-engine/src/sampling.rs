//! Turning logits into the next token: penalties, temperature, top-k, top-p, min-p, and a
//! seeded random draw. Temperature 0 is greedy. Log-probabilities are reported from the raw
//! model distribution (before penalties and temperature), as vLLM and OpenAI do.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Per-request sampling parameters (validated by the server).
#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1].
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 0 = off.
    pub min_p: f32,
    /// Fixed seed, or `None` for a random one.
    pub seed: Option<u64>,
    /// Subtracted once from every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the generated text.
    pub frequency_penalty: f32,
    /// Divides positive / multiplies negative logits of tokens in prompt or output (1 = off).
    pub repetition_penalty: f32,
    /// Alternatives to report per token (`None`: no log-probabilities).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logprobs: None,
        }
    }
}

/// Log-probability of a chosen token and the top alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    /// Log-probability of the chosen token.
    pub chosen: f32,
    /// `(token id, log-probability)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Sampling state of one sequence.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Occurrences of each token in the output so far.
    counts: std::collections::HashMap<u32, u32>,
    /// Tokens of the prompt (for the repetition penalty).
    prompt_tokens: std::collections::HashSet<u32>,
}

impl Sampler {
    /// A sampler for one sequence.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let prompt_tokens = if params.repetition_penalty != 1.0 { prompt.iter().copied().collect() } else { Default::default() };
        Self { params, rng, counts: Default::default(), prompt_tokens }
    }

    /// Chooses the next token from `logits` (modified in place) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> (u32, Option<Logprobs>) {
        // Log-probabilities describe the model's own distribution: read before penalties.
        let raw = self.params.logprobs.map(|k| (log_softmax_top(logits, k), logits.to_vec()));
        self.apply_penalties(logits);
        let token = if self.params.temperature <= 0.0 { argmax(logits) } else { self.draw(logits) };
        *self.counts.entry(token).or_insert(0) += 1;
        let lp = raw.map(|((lse, top), row)| Logprobs { chosen: row[token as usize] - lse, top });
        (token, lp)
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in self.prompt_tokens.iter().chain(self.counts.keys()) {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &c) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * c as f32;
                }
            }
        }
    }

    /// Draws from the filtered distribution. Sorting the whole vocabulary per token would cost
    /// milliseconds on the engine thread, so only what the filters need is ordered: top-k is a
    /// selection, and top-p / min-p sort a prefix that widens until their cut-off falls in it.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let mut cand: Vec<(u32, f32)> =
            logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l * inv_t)).collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, desc);
            cand.truncate(p.top_k);
        }
        let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = cand.iter().map(|(_, l)| (l - max).exp()).sum();
        let prob = |l: f32| (l - max).exp() / sum;
        let mut keep = cand.len();
        if p.top_p < 1.0 || p.min_p > 0.0 {
            let mut sorted = 0;
            let mut width = 64.min(cand.len());
            loop {
                if width < cand.len() {
                    cand[sorted..].select_nth_unstable_by(width - 1 - sorted, desc);
                }
                cand[sorted..width].sort_unstable_by(desc);
                sorted = width;
                let floor = prob(cand[0].1) * p.min_p;
                let mut acc = 0.0;
                let cut = cand[..sorted].iter().position(|c| {
                    let x = prob(c.1);
                    let below_floor = p.min_p > 0.0 && x < floor;
                    acc += x;
                    below_floor || (p.top_p < 1.0 && acc - x >= p.top_p)
                });
                if let Some(c) = cut {
                    keep = c.max(1);
                    break;
                }
                if sorted == cand.len() {
                    break;
                }
                width = (width * 8).min(cand.len());
            }
        }
        let kept = &cand[..keep];
        let total: f32 = kept.iter().map(|c| prob(c.1)).sum();
        let mut r = self.rng.random::<f32>() * total;
        for c in kept {
            let x = prob(c.1);
            if r < x {
                return c.0;
            }
            r -= x;
        }
        kept[keep - 1].0
    }
}

/// Index of the largest value (lowest index on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-sum-exp of `logits` and the `k` best `(id, logprob)`, most likely first.
fn log_softmax_top(logits: &[f32], k: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    if k > 0 {
        idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    }
    let mut top: Vec<(u32, f32)> = idx[..k].iter().map(|&i| (i, logits[i as usize] - lse)).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    (lse, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, -1.0, 0.5]
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() }, &[]);
        assert_eq!(s.sample(&mut logits()).0, 1);
    }

    #[test]
    fn same_seed_same_draws() {
        let p = SamplingParams { temperature: 1.0, seed: Some(7), ..Default::default() };
        let draw = || {
            let mut s = Sampler::new(p.clone(), &[]);
            (0..32).map(|_| s.sample(&mut logits()).0).collect::<Vec<_>>()
        };
        let a = draw();
        assert_eq!(a, draw());
        assert!(a.iter().any(|&t| t != a[0]), "temperature 1 should vary: {a:?}");
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingParams { top_k: 1, seed: Some(1), ..Default::default() }, &[]);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits()).0, 1);
        }
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let mut s = Sampler::new(SamplingParams { top_p: 0.5, seed: Some(3), ..Default::default() }, &[]);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits()).0, 1);
        }
        let mut s = Sampler::new(SamplingParams { min_p: 0.9, seed: Some(3), ..Default::default() }, &[]);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits()).0, 1);
        }
    }

    #[test]
    fn large_vocabulary_draws_stay_inside_the_nucleus() {
        let logits: Vec<f32> = (0..50_000u32).map(|i| ((i.wrapping_mul(2_654_435_761) >> 16) % 1000) as f32 / 90.0).collect();
        // Reference nucleus by a full sort.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        let max = logits[order[0] as usize];
        let z: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        let mut acc = 0.0;
        let n = order.iter().take_while(|&&t| {
            let before = acc;
            acc += (logits[t as usize] - max).exp() / z;
            before < 0.3
        });
        let nucleus: std::collections::HashSet<u32> = n.copied().collect();
        assert!(nucleus.len() > 64, "the nucleus should need a widened prefix ({})", nucleus.len());
        let mut s = Sampler::new(SamplingParams { top_p: 0.3, seed: Some(9), ..Default::default() }, &[]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            let t = s.sample(&mut logits.clone()).0;
            assert!(nucleus.contains(&t), "token {t} outside the top-p nucleus");
            seen.insert(t);
        }
        assert!(seen.len() > 20, "draws should spread over the nucleus");
    }

    #[test]
    fn penalties_change_the_greedy_choice() {
        let mut s = Sampler::new(
            SamplingParams { temperature: 0.0, frequency_penalty: 2.0, ..Default::default() },
            &[],
        );
        assert_eq!(s.sample(&mut logits()).0, 1);
        assert_eq!(s.sample(&mut logits()).0, 2, "token 1 penalised by 2.0 after one use");
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, repetition_penalty: 4.0, ..Default::default() }, &[1]);
        assert_eq!(s.sample(&mut logits()).0, 2);
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, logprobs: Some(3), ..Default::default() }, &[]);
        let (t, lp) = s.sample(&mut logits());
        let lp = lp.unwrap();
        assert_eq!(t, 1);
        assert_eq!(lp.top.len(), 3);
        assert_eq!(lp.top[0].0, 1);
        assert!((lp.chosen - lp.top[0].1).abs() < 1e-6);
        let lse = 3.0 - lp.top[0].1;
        let total: f32 = logits().iter().map(|l| (l - lse).exp()).sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
    }
}
