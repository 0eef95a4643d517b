//! A Hugging Face directory as a model source. The fixture is SmolLM2 itself, converted from
//! its GGUF into HF layout by the test (F16 safetensors with Q/K rows un-permuted back to HF's
//! rope layout, a `tokenizer.json` built from the GGUF vocabulary and merges), so both sources
//! can be compared on the same weights.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use sluice_model::gguf::{GgufFile, MetaValue};
use sluice_model::quant::dequantize;
use sluice_model::{KvCache, Logits};

use crate::common::*;

fn strings(f: &GgufFile, key: &str) -> Vec<String> {
    f.get(key).unwrap().as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

/// HF row order of a GGUF Q/K matrix: GGUF interleaves each head's rotary pairs.
fn unpermute(rows: &[f32], n_rows: usize, cols: usize, head_dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows.len()];
    let half = head_dim / 2;
    for r in 0..n_rows {
        let (h, j) = (r / head_dim, r % head_dim);
        let src = if j < half { h * head_dim + 2 * j } else { h * head_dim + 2 * (j - half) + 1 };
        out[r * cols..(r + 1) * cols].copy_from_slice(&rows[src * cols..(src + 1) * cols]);
    }
    out
}

fn build_fixture() -> PathBuf {
    let src = model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    let dir = std::env::temp_dir().join(format!("sluice-hf-smollm2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = GgufFile::open(&src).unwrap();
    let cfg = sluice_model::ModelConfig::from_gguf(&f).unwrap();
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, info) in &f.tensors {
        let n = info.n_elements() as usize;
        let mut v = vec![0f32; n];
        dequantize(info.ggml_type, f.tensor_bytes(info), &mut v);
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        if name.ends_with("attn_q.weight") || name.ends_with("attn_k.weight") {
            v = unpermute(&v, shape[0], shape[1], cfg.head_dim);
        }
        let hf = match name.as_str() {
            "token_embd.weight" => "model.embed_tokens.weight".to_string(),
            "output_norm.weight" => "model.norm.weight".to_string(),
            _ => {
                let rest = name.strip_prefix("blk.").unwrap();
                let (layer, t) = rest.split_once('.').unwrap();
                let m = match t {
                    "attn_norm.weight" => "input_layernorm.weight",
                    "attn_q.weight" => "self_attn.q_proj.weight",
                    "attn_k.weight" => "self_attn.k_proj.weight",
                    "attn_v.weight" => "self_attn.v_proj.weight",
                    "attn_output.weight" => "self_attn.o_proj.weight",
                    "ffn_norm.weight" => "post_attention_layernorm.weight",
                    "ffn_gate.weight" => "mlp.gate_proj.weight",
                    "ffn_up.weight" => "mlp.up_proj.weight",
                    "ffn_down.weight" => "mlp.down_proj.weight",
                    other => panic!("unexpected tensor {other}"),
                };
                format!("model.layers.{layer}.{m}")
            }
        };
        let bytes: Vec<u8> = v.iter().flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes()).collect();
        tensors.insert(hf, (shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, (shape, b))| {
            (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.rms_eps, "rope_theta": cfg.rope_theta, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tokens = strings(&f, "tokenizer.ggml.tokens");
    let types: Vec<i64> = f
        .get("tokenizer.ggml.token_type")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| match v {
            MetaValue::I64(x) => *x,
            MetaValue::U64(x) => *x as i64,
            _ => 1,
        })
        .collect();
    let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<Value> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == 3)
        .map(|(i, _)| json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": strings(&f, "tokenizer.ggml.merges")}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let tc = json!({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": false,
        "chat_template": f.get_str("tokenizer.chat_template").unwrap()
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    dir
}

#[test]
fn hf_directory_serves_the_same_model_as_its_gguf() {
    let dir = build_fixture();
    let hf = sluice_model::load(&dir, 2).unwrap();
    let gg = smollm2();
    // Tokenizer: the `tokenizers` crate on tokenizer.json agrees with llama.cpp's ids.
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tokenizer_smollm2.json"))
            .unwrap(),
    )
    .unwrap();
    for c in golden["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(hf.tokenizer.encode(text, true), want, "{text:?}");
        assert_eq!(hf.tokenizer.decode(&want, true), text);
    }
    // Chat template from tokenizer_config.json.
    let msgs = [sluice_model::ChatMessage { role: "user".into(), content: "Hi".into() }];
    assert_eq!(
        hf.chat_template.as_ref().unwrap().render(&msgs, true).unwrap(),
        gg.chat_template.as_ref().unwrap().render(&msgs, true).unwrap()
    );
    assert!(!hf.tokenizer.add_bos);
    assert!(hf.tokenizer.is_end_of_generation(2));
    // Same weights (F16 copies of the dequantized GGUF), f32 activations instead of 8-bit ones.
    let ids = gg.tokenizer.encode_prompt("The capital of France is", false);
    let out = greedy(&hf, &ids, 4);
    assert!(hf.tokenizer.decode(&out, false).starts_with(" Paris"), "{:?}", hf.tokenizer.decode(&out, false));
    let mut c1 = KvCache::new(&hf.model.cfg, ids.len());
    let mut c2 = KvCache::new(&gg.model.cfg, ids.len());
    let a = hf.model.forward(&ids, &mut c1, Logits::Last).unwrap();
    let b = gg.model.forward(&ids, &mut c2, Logits::Last).unwrap();
    let max_delta = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    eprintln!("HF (F16 weights, f32 activations) vs GGUF (Q8 activations): max |Δlogit| = {max_delta:.4}");
    assert!(max_delta < 1.5, "{max_delta}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hf_directory_errors_are_clear() {
    let dir = std::env::temp_dir().join(format!("sluice-hf-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = sluice_model::load(&dir, 1).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "bert", "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1, "vocab_size": 8}"#).unwrap();
    let e = sluice_model::load(&dir, 1).unwrap_err().to_string();
    assert!(e.contains("unsupported architecture"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
