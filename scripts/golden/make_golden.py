#!/usr/bin/env python3
"""Regenerates the golden files the model tests compare against, using llama.cpp (through the
llama-cpp-python bindings) on the same GGUF files.

    scripts/golden/run.sh    # builds the reference libllama.so once, then runs this script

The reference is llama.cpp's portable AVX2 build with its reference dot products (no weight
repacking, no tiled K-quant matmul): one fixed arithmetic, the same on every x86-64-v3 machine,
which Sluice's kernels reproduce bit for bit. A build tuned with -march=native sums in other
orders (AVX-512 lanes), so its logits would differ from ours, and from machine to machine, in
the last bits -- enough, through 8-bit activation quantization, to move logits by tenths.

Environment: LLAMA_CPP_LIB_PATH (folder holding libllama.so) and PYTHONPATH (the unpacked
llama-cpp-python sdist) are set by scripts/golden/run.sh. Requires numpy.
"""
import json
import os
import random
import sys

import numpy as np

# K-quant matrices times batches of 8+ rows: llama.cpp's reference dot products, not its tiled
# speed path (another summation order, chosen by batch size). Read when the library loads.
os.environ["GGML_CPU_TILED_MM"] = "0"

import llama_cpp  # noqa: E402
from llama_cpp import Llama  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.environ.get("SLUICE_MODELS_DIR", os.path.join(ROOT, "models"))
OUT = os.environ.get("SLUICE_GOLDEN_OUT", os.path.join(ROOT, "crates", "sluice-model", "tests", "golden"))
TOP = 50
GEN = 32

SMOLLM_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the boiling point of water in Celsius?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nList three fruits.<|im_end|>\n<|im_start|>assistant\n",
    "Question: What is 12 + 7?\nAnswer:",
    "In 1969, Neil Armstrong became the first person to",
]

GEMMA_PROMPTS = [
    "Paris is the capital city of",
    "The quick brown fox",
    "def add(a, b):\n",
    "Water boils at a temperature of",
    "<start_of_turn>user\nName a primary color.<end_of_turn>\n<start_of_turn>model\n",
    "Les enfants jouent dans le jardin pendant que",
    "The largest planet in our solar system is",
]


def tokenizer_corpus(specials):
    """At least 300 varied strings: unicode, emoji, CJK, code, whitespace runs, digits, specials."""
    base = [
        "", " ", "  ", "   ", "\n", "\n\n", "\n\n\n", "\t", " \t \n ", "a", "A", " a", "hello", " hello",
        "Hello, world!", "Hello world", "HELLO WORLD", "hello\nworld", "hello  world", "hello   world",
        "I'm here. You're there. We'll see. They've gone. He'd know. It's fine. Don't.",
        "12345", "1 2 3", "3.14159", "1,000,000", "2026-11-29", "0x1F", "v1.2.3", "+1 (555) 010-9999",
        "100%", "$42.50", "€9,99", "¥1000", "第3章", "١٢٣", "Ⅻ", "½ ¼ ¾",
        "こんにちは世界", "你好，世界！", "안녕하세요", "Привет, мир!", "Γειά σου Κόσμε", "שלום עולם",
        "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Tiếng Việt có dấu", "Zürich Straße Ærø Ñandú",
        "naïve café résumé coöperate", "ﬁ ﬂ ligatures", "e\u0301 (combining acute)", "\u200b zero width",
        "🙂", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "❤️", "🤖 robots 🤖", "⚡️🔥💯",
        "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
        "fn main() {\n    println!(\"hi\");\n}", "<div class=\"x\">text</div>", "SELECT * FROM t WHERE id = 1;",
        "{\"key\": [1, 2, {\"n\": null}]}", "a_b-c.d/e\\f", "x += 1  # comment", "if x==y:\n\tpass",
        "    indented\n        more\n", "trailing spaces   ", "   leading spaces", "mixed \t\ttabs",
        "!!!???...", "---", "***bold***", "`code`", "~/path/to/file.txt", "https://example.com/a?b=c&d=e",
        "user@example.com", "#hashtag @mention", "C++ and C# and F#", "...ellipsis…", "“quotes” ‘single’",
        "«guillemets»", "— em dash – en dash", "line1\r\nline2", "\r\n\r\n", "tab\tseparated\tvalues",
    ]
    words = ["the", "model", "token", "Sluice", "inference", "batch", "cache", "数据", "模型", "🚀",
             "über", "naïve", "42", "3.5", "  ", "\n", "\t", ",", ".", "!", "?", "'s", "'re", "(x)",
             "[1]", "{a}", "<b>", "—", "é", "ß", "ç", "ø", "ق", "ж", "λ", "∑", "√2", "∞", "→"]
    rng = random.Random(1234)
    out = list(base)
    for s in specials:
        out.append(s)
        out.append(f"before {s} after")
        out.append(f"{s}\n{s}text{s}")
    while len(out) < 340:
        k = rng.randint(1, 12)
        sep = rng.choice(["", " ", "  ", "\n", " "])
        out.append(sep.join(rng.choice(words) for _ in range(k)))
    return out


def logits_for(m, n_vocab, idx):
    return np.ctypeslib.as_array(m._ctx.get_logits_ith(idx), shape=(n_vocab,)).copy()


# Short token prompts checked for bit-equality of every top logit (the longer cases are held to
# the same arithmetic, and their greedy continuations test more).
EXACT = {
    "smollm2": [[504], [3575], [504, 3575], [504, 3575, 282]],
    "gemma3": [[2], [2, 818], [2, 818, 3823, 8864]],
}


def plain_kernel_params():
    """Model parameters without weight repacking: llama.cpp then multiplies every matrix with its
    reference dot products (ggml_vec_dot_*), not with the interleaved layouts it builds at load
    for speed, whose summation order is another one."""
    params = DEFAULT_MODEL_PARAMS()
    params.use_extra_bufts = False
    return params


DEFAULT_MODEL_PARAMS = llama_cpp.llama_model_default_params
llama_cpp.llama_model_default_params = plain_kernel_params
llama_cpp.llama_cpp.llama_model_default_params = plain_kernel_params


# ggml type ids of the KV cache types checked: f32 and f16 (llama.cpp's default).
KV_TYPES = {"f32": 0, "f16": 1}


def run_model(path, prompts, specials, name, kv="f32"):
    """Writes NAME.json (f32 KV cache) or NAME_f16kv.json, and with f32 the tokenizer file."""
    m = Llama(path, n_ctx=2048, n_threads=2, n_batch=512, logits_all=True, verbose=False,
              type_k=KV_TYPES[kv], type_v=KV_TYPES[kv], flash_attn=False)
    n_vocab = m.n_vocab()
    cases = []
    for p in prompts:
        ids = m.tokenize(p.encode(), add_bos=True, special=True)
        m.reset()
        m.eval(ids)
        last = np.array(m.scores[m.n_tokens - 1], dtype=np.float32)
        top = np.argsort(-last)[:TOP]
        gen, gaps = [], []
        logits = last
        for _ in range(GEN):
            order = np.argsort(-logits)[:2]
            gaps.append(float(logits[order[0]] - logits[order[1]]))
            t = int(order[0])
            gen.append(t)
            m.eval([t])
            logits = np.array(m.scores[m.n_tokens - 1], dtype=np.float32)
        cases.append({
            "prompt": p,
            "prompt_ids": [int(t) for t in ids],
            "top_ids": [int(t) for t in top],
            "top_logits": [float(last[t]) for t in top],
            "greedy": gen,
            "top2_gap": gaps,
        })
        print(f"{name}: {p[:40]!r} -> {m.detokenize(gen).decode(errors='replace')[:60]!r}", file=sys.stderr)
    exact = []
    for ids in EXACT[name]:
        m.reset()
        m.eval(ids)
        last = np.array(m.scores[m.n_tokens - 1], dtype=np.float32)
        top = np.argsort(-last)[:TOP]
        exact.append({"prompt_ids": ids, "top_ids": [int(t) for t in top], "top_logits": [float(last[t]) for t in top]})
    suffix = "" if kv == "f32" else f"_{kv}kv"
    with open(os.path.join(OUT, f"{name}{suffix}.json"), "w") as f:
        json.dump({"model": os.path.basename(path), "reference": "llama.cpp (llama-cpp-python 0.3.36, portable AVX2 build, reference "
                              f"dot products: no weight repacking, no tiled K-quant path), {kv} KV cache",
                   "cases": cases, "exact_cases": exact}, f, indent=0)
    if kv != "f32":
        return
    tok_cases = []
    for s in tokenizer_corpus(specials):
        ids = m.tokenize(s.encode(), add_bos=False, special=True)
        tok_cases.append({"text": s, "ids": [int(t) for t in ids]})
    with open(os.path.join(OUT, f"tokenizer_{name}.json"), "w") as f:
        json.dump({"model": os.path.basename(path), "parse_special": True, "cases": tok_cases}, f, indent=0,
                  ensure_ascii=False)


def main():
    os.makedirs(OUT, exist_ok=True)
    for kv in KV_TYPES:
        run_model(os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf"), SMOLLM_PROMPTS,
                  ["<|im_start|>", "<|im_end|>", "<|endoftext|>"], "smollm2", kv)
        run_model(os.path.join(MODELS, "gemma-3-270m-q4_k_m.gguf"), GEMMA_PROMPTS,
                  ["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>"], "gemma3", kv)


if __name__ == "__main__":
    main()
