//! `sluice bench-model`: prompt-processing and decode throughput of the in-process model,
//! without HTTP, as llama-bench measures llama.cpp (pp: one batch of N prompt tokens; tg: N
//! single-token steps). Prints one JSON line per test and a table on stderr.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use sluice_model::phases::{Phase, PhaseTimes};
use sluice_model::{KvCache, Logits};

/// Arguments of `sluice bench-model`.
#[derive(Args)]
pub struct BenchModelArgs {
    /// A GGUF file or a Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Prompt tokens for the prompt-processing test.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Generated tokens for the decode test.
    #[arg(long, default_value_t = 128)]
    generate: usize,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also measure batched decode: this many sequences, one token each per step.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// How the KV cache stores keys and values (f16, f32 or q8_0), as `serve --kv-cache-dtype`.
    #[arg(long, default_value = "f16", value_parser = sluice_model::KvDtype::parse)]
    kv_cache_dtype: sluice_model::KvDtype,
    /// How matrix products round (fast or reference), as `serve --numerics`.
    #[arg(long, default_value = "reference", value_parser = sluice_model::quant::Numerics::parse)]
    numerics: sluice_model::quant::Numerics,
    /// Also report where the decode steps spend their time, by phase of the forward pass (of
    /// the batched decode when `--batch` is set, else of the single-sequence decode).
    #[arg(long)]
    phases: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark.
pub fn run(args: BenchModelArgs) -> anyhow::Result<()> {
    let mut m = sluice_model::load(&args.model, args.threads).with_context(|| format!("cannot load {}", args.model.display()))?;
    m.model.set_numerics(args.numerics);
    let model = &m.model;
    let vocab = model.cfg.vocab_size as u32;
    // Deterministic pseudo-random tokens, as llama-bench uses random tokens.
    let tokens: Vec<u32> = (0..args.prompt.max(args.generate).max(80) as u64)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % vocab as u64) as u32)
        .collect();
    // Warm-up: page in the weights.
    let mut cache = KvCache::with_dtype(&model.cfg, 8, args.kv_cache_dtype);
    model.forward(&tokens[..4], &mut cache, Logits::Last)?;
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    let mut phases = None;
    for rep in 0..args.reps.max(1) {
        let mut cache = KvCache::with_dtype(&model.cfg, args.prompt + 1, args.kv_cache_dtype);
        let t = Instant::now();
        model.forward(&tokens[..args.prompt], &mut cache, Logits::Last)?;
        pp.push(args.prompt as f64 / t.elapsed().as_secs_f64());
        let mut cache = KvCache::with_dtype(&model.cfg, args.generate + 1, args.kv_cache_dtype);
        // Phases of the last repetition's decode (timing off for the others).
        let time_tg = args.phases && args.batch == 0 && rep + 1 == args.reps.max(1);
        model.time_phases(time_tg);
        let t = Instant::now();
        for &tok in &tokens[..args.generate] {
            model.forward(&[tok], &mut cache, Logits::Last)?;
        }
        tg.push(args.generate as f64 / t.elapsed().as_secs_f64());
        if time_tg {
            phases = model.phase_times();
            model.time_phases(false);
        }
    }
    let (pp, tg) = (median(pp), median(tg));
    let batched = if args.batch > 0 {
        let (rate, timed) = batched_decode(model, &tokens, &args)?;
        phases = timed.or(phases);
        Some(rate)
    } else {
        None
    };
    // Milliseconds per decode step, by phase.
    let per_step: Vec<(&str, f64)> = phases
        .iter()
        .flat_map(|t| Phase::ALL.map(|p| (p.name(), t.get(p).as_secs_f64() * 1e3 / t.passes.max(1) as f64)))
        .collect();
    let out = serde_json::json!({
        "engine": "sluice", "model": m.name, "threads": args.threads,
        "pp_tokens": args.prompt, "pp_tok_s": pp, "tg_tokens": args.generate, "tg_tok_s": tg,
        "batch": args.batch, "batched_tg_tok_s": batched,
        "kernels": format!("{:?}", model.isa()), "numerics": format!("{:?}", model.numerics()),
        "phases_ms_per_step": phases.map(|_| per_step.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>()),
    });
    #[expect(clippy::print_stdout, reason = "the benchmark's machine-readable output")]
    {
        println!("{out}");
    }
    eprintln!("| engine | threads | pp{} tok/s | tg{} tok/s |", args.prompt, args.generate);
    eprintln!("| sluice | {} | {:.1} | {:.1} |", args.threads, pp, tg);
    if let Some(b) = batched {
        eprintln!("batched decode, {} sequences: {b:.1} tok/s", args.batch);
    }
    if let Some(t) = phases {
        let step = t.total().as_secs_f64() * 1e3 / t.passes.max(1) as f64;
        eprintln!("| phase ({} tokens per step) | ms per step | share |", t.tokens / t.passes.max(1));
        for (name, ms) in &per_step {
            eprintln!("| {name} | {ms:.2} | {:.0}% |", 100.0 * ms / step.max(f64::MIN_POSITIVE));
        }
        eprintln!("| total | {step:.2} | 100% |");
    }
    Ok(())
}

/// Decode throughput with `args.batch` sequences stepping together (64-token contexts), and
/// with `--phases` where its steps spent their time.
fn batched_decode(model: &sluice_model::Model, tokens: &[u32], args: &BenchModelArgs) -> anyhow::Result<(f64, Option<PhaseTimes>)> {
    let ctx = 64;
    let steps = args.generate;
    let block = 16;
    let per_seq = (ctx + steps).div_ceil(block);
    let mut kv = sluice_model::PagedKv::with_dtype(&model.cfg, per_seq * args.batch, block, args.kv_cache_dtype);
    let tables: Vec<Vec<u32>> = (0..args.batch).map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect()).collect();
    let prompts: Vec<&[u32]> = (0..args.batch).map(|s| &tokens[s % 8..s % 8 + ctx]).collect();
    for s in 0..args.batch {
        let seq = sluice_model::BatchSeq {
            tokens: prompts[s],
            start_pos: 0,
            block_table: &tables[s],
            prompt_len: prompts[s].len(),
            logits: None,
        };
        model.forward_batch(&[seq], &mut kv)?;
    }
    // One logits buffer for every step, as the engine keeps one.
    let mut logits = Vec::new();
    model.time_phases(args.phases);
    let t = Instant::now();
    for step in 0..steps {
        let toks: Vec<[u32; 1]> = (0..args.batch).map(|s| [tokens[(s + step) % tokens.len()]]).collect();
        let batch: Vec<sluice_model::BatchSeq<'_>> = (0..args.batch)
            .map(|s| sluice_model::BatchSeq {
                tokens: &toks[s],
                start_pos: ctx + step,
                block_table: &tables[s],
                prompt_len: ctx,
                logits: Some(Logits::Last),
            })
            .collect();
        model.forward_batch_into(&batch, &mut kv, &mut logits)?;
    }
    let rate = (steps * args.batch) as f64 / t.elapsed().as_secs_f64();
    let phases = model.phase_times();
    model.time_phases(false);
    Ok((rate, phases))
}
