//! Continuous batching against the real SmolLM2 model: batched, preempted and prefix-cached
//! runs must produce exactly the tokens each request produces alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code may unwrap")]

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use sluice_engine::{EngineConfig, EngineHandle, Event, FinishReason, GenerateRequest, KvDtype, SamplingParams};
use sluice_model::LoadedModel;

fn load() -> LoadedModel {
    let dir = std::env::var_os("SLUICE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} missing: run scripts/fetch-models.sh", p.display());
    sluice_model::load(&p, 2).unwrap()
}

fn model() -> Arc<LoadedModel> {
    static M: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    M.get_or_init(|| Arc::new(load())).clone()
}

fn request(m: &LoadedModel, prompt: &str, max_tokens: usize, salt: &[u8]) -> GenerateRequest {
    GenerateRequest {
        request_id: prompt.chars().take(12).collect(),
        prompt: m.tokenizer.encode_prompt(prompt, false),
        max_tokens,
        sampling: SamplingParams { temperature: 0.0, ..Default::default() },
        stop: Vec::new(),
        ignore_eos: true,
        cache_salt: salt.to_vec(),
    }
}

/// Generated token ids of one request.
async fn run(engine: &EngineHandle, req: GenerateRequest) -> Vec<u32> {
    let mut s = engine.submit(req).unwrap();
    let mut ids = Vec::new();
    while let Some(ev) = s.next().await {
        match ev {
            Event::Token { id, .. } => ids.push(id),
            Event::Done { finish, .. } => {
                assert_eq!(finish, FinishReason::Length);
                return ids;
            }
            Event::Error(e) => panic!("{e}"),
        }
    }
    panic!("stream ended without Done");
}

/// Waits until the engine has booked `n` finished requests (it does so just after sending each
/// request's last event, after updating its gauges).
async fn settle(engine: &EngineHandle, n: u64) {
    for _ in 0..500 {
        if engine.stats.finished.load(Ordering::Acquire) >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("engine did not book {n} finished requests");
}

fn prompts() -> Vec<(String, usize)> {
    let base = [
        "The capital of France is",
        "Once upon a time",
        "def fibonacci(n):",
        "List three fruits:",
        "The quick brown fox jumps over the lazy dog. Then the dog",
        "In 1969,",
        "Water boils at",
        "A haiku about autumn:",
    ];
    (0..16).map(|i| {
        let p = base[i % base.len()];
        let p = if i >= base.len() { format!("{p} {p}") } else { p.to_string() };
        (p, 6 + (i * 5) % 23)
    })
    .collect()
}

async fn alone(m: &Arc<LoadedModel>, cases: &[(String, usize)]) -> Vec<Vec<u32>> {
    alone_with(m, cases, EngineConfig::default()).await
}

async fn alone_with(m: &Arc<LoadedModel>, cases: &[(String, usize)], cfg: EngineConfig) -> Vec<Vec<u32>> {
    let solo = EngineHandle::start(m.clone(), EngineConfig { max_num_seqs: 1, prefix_caching: false, ..cfg }).unwrap();
    let mut out = Vec::new();
    for (p, n) in cases {
        out.push(run(&solo, request(m, p, *n, b"t")).await);
    }
    out
}

async fn concurrent(engine: &EngineHandle, m: &Arc<LoadedModel>, cases: &[(String, usize)]) -> Vec<Vec<u32>> {
    let tasks: Vec<_> = cases
        .iter()
        .map(|(p, n)| {
            let e = engine.clone();
            let r = request(m, p, *n, b"t");
            tokio::spawn(async move { run(&e, r).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Sixteen requests of mixed lengths at once give each request's solo tokens, and free every block.
async fn concurrent_runs_match_solo_runs(m: Arc<LoadedModel>, kv_cache_dtype: KvDtype) {
    let cases = prompts();
    let want = alone_with(&m, &cases, EngineConfig { kv_cache_dtype, ..Default::default() }).await;
    // Small token budget: prompts are split into chunks and mixed with decodes.
    let cfg = EngineConfig { max_num_batched_tokens: 24, kv_cache_dtype, ..Default::default() };
    let engine = EngineHandle::start(m.clone(), cfg).unwrap();
    let got = concurrent(&engine, &m, &cases).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "request {i} ({:?})", cases[i].0);
    }
    assert!(engine.stats.steps.load(Ordering::Acquire) < want.iter().map(|w| w.len() as u64).sum::<u64>(), "not batched");
    settle(&engine, cases.len() as u64).await;
    assert_eq!(engine.stats.kv_blocks_used.load(Ordering::Acquire), 0, "blocks leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_requests_match_their_solo_runs() {
    concurrent_runs_match_solo_runs(model(), KvDtype::F16).await;
}

/// The 8-bit cache encodes each position on its own and attention over it does not depend on
/// the batch either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_8_bit_kv_cache_concurrent_requests_still_match_their_solo_runs() {
    concurrent_runs_match_solo_runs(model(), KvDtype::Q8_0).await;
}

#[test]
fn an_8_bit_kv_cache_with_blocks_it_cannot_use_is_refused_at_start() {
    let cfg = EngineConfig { kv_cache_dtype: KvDtype::Q8_0, block_size: 4, ..Default::default() };
    let e = EngineHandle::start(model(), cfg).err().unwrap().to_string();
    assert!(e.contains("q8_0 KV cache needs a block size that is a multiple of 8, not 4"), "{e}");
}

/// The fast numerics compute a batch with other kernels than a lone decode step (16 rows and
/// four tokens per instruction against eight rows and one), yet round every product the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fast_numerics_concurrent_requests_still_match_their_solo_runs() {
    let mut m = load();
    m.model.set_numerics(sluice_engine::Numerics::Fast);
    concurrent_runs_match_solo_runs(Arc::new(m), KvDtype::F16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_pool_preempts_and_still_matches() {
    let m = model();
    let cases: Vec<(String, usize)> = prompts().into_iter().take(8).collect();
    let want = alone(&m, &cases).await;
    // 48 blocks x 4 positions = 192 positions for 8 requests of up to ~45 positions each.
    let per_block = sluice_model::PagedKv::bytes_per_block(&m.model.cfg, 4, EngineConfig::default().kv_cache_dtype);
    let cfg = EngineConfig { block_size: 4, kv_cache_bytes: 12 * per_block, ..Default::default() };
    let engine = EngineHandle::start(m.clone(), cfg).unwrap();
    let got = concurrent(&engine, &m, &cases).await;
    assert_eq!(got, want);
    assert!(engine.stats.preemptions.load(Ordering::Acquire) > 0, "the pool was meant to be too small");
    settle(&engine, cases.len() as u64).await;
    assert_eq!(engine.stats.kv_blocks_used.load(Ordering::Acquire), 0, "blocks leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_cache_hit_gives_the_same_output_as_a_miss() {
    let m = model();
    let prompt = "You are a careful assistant. Answer briefly and precisely. Question: what is the capital of Italy? Answer:";
    let engine = EngineHandle::start(m.clone(), EngineConfig::default()).unwrap();
    let miss = run(&engine, request(&m, prompt, 12, b"a")).await;
    // The blocks become shareable when the engine books the request.
    settle(&engine, 1).await;
    let queried = engine.stats.prefix_queried_tokens.load(Ordering::Acquire);
    assert_eq!(engine.stats.prefix_hit_tokens.load(Ordering::Acquire), 0);
    let hit = run(&engine, request(&m, prompt, 12, b"a")).await;
    settle(&engine, 2).await;
    let hits = engine.stats.prefix_hit_tokens.load(Ordering::Acquire);
    assert!(hits >= 16, "expected a prefix hit, got {hits} of {queried} tokens");
    assert_eq!(hit, miss);
    // Another namespace never hits the first one's blocks.
    let other = run(&engine, request(&m, prompt, 12, b"b")).await;
    settle(&engine, 3).await;
    assert_eq!(engine.stats.prefix_hit_tokens.load(Ordering::Acquire), hits);
    assert_eq!(other, miss);
}
