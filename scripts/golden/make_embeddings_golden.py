"""Golden sentence embeddings for all-MiniLM-L6-v2, from sentence-transformers on CPU.

Writes crates/sluice-model/tests/golden/minilm_embeddings.json: for each text, the token ids the
reference tokenizer produced and the normalised sentence vector. Run by
scripts/golden/embeddings.sh (dev-only; CI reads the committed file).
"""
import json
import sys
from pathlib import Path

from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models" / "all-MiniLM-L6-v2"
OUT = ROOT / "crates/sluice-model/tests/golden/minilm_embeddings.json"

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "How do I reset my password?",
    "What is the refund policy for annual subscriptions?",
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "The mitochondria is the powerhouse of the cell.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "def add(a, b):\n    return a + b",
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '1 day';",
    "fn main() { println!(\"hi\"); }",
    "Error: connection refused (os error 111) while connecting to 127.0.0.1:5432",
    "naïve café résumé coöperate",
    "Ünïcödé ÀÉÎÕÜ ß ø å",
    "東京は日本の首都です。",
    "北京是中国的首都。",
    "서울은 한국의 수도입니다.",
    "Москва — столица России.",
    "Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "مرحبا بالعالم",
    "I love pizza 🍕 and sushi 🍣!",
    "😀😃😄😁",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\n\nhere",
    "1234567890 3.14159 2.71828 1e-9",
    "The price is $1,299.99 (incl. 20% VAT).",
    "e-mail me at someone@example.com or call +1 (555) 010-9999",
    "https://example.com/path?query=1&other=two#fragment",
    "UPPERCASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "a",
    "?",
    "The the the the the the the the the the",
    "Retrieval-augmented generation grounds a language model's answers in documents fetched at query time.",
    "Continuous batching lets an inference server add and remove sequences from the running batch at every step.",
    "A paged KV cache stores attention keys and values in fixed-size blocks so memory is not fragmented.",
    "Cats are small carnivorous mammals often kept as pets.",
    "Dogs were domesticated from wolves thousands of years ago.",
    "The stock market fell sharply after the interest rate announcement.",
    "Heavy rain is expected across the region tomorrow afternoon.",
    "She finished the marathon in under three hours.",
    "[CLS] literal special token text [SEP]",
    "don't won't can't shouldn't y'all'd've",
    " ".join(["Sentence number %d talks about distributed systems, consensus and replication." % i for i in range(12)]),
    " ".join(["word%d" % i for i in range(60)]),
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. "
    "Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.",
    "C'est la vie. Das ist gut. Eso es todo. È vero.",
    "x = [i ** 2 for i in range(10) if i % 2 == 0]",
    "<html><body><h1>Title</h1><p>Paragraph &amp; more</p></body></html>",
    "{\"key\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "The year 2026 follows 2025.",
]


def main():
    model = SentenceTransformer(str(MODEL_DIR), device="cpu")
    tok = model.tokenizer
    out = []
    vecs = model.encode(TEXTS, batch_size=16, normalize_embeddings=False, convert_to_numpy=True)
    for text, vec in zip(TEXTS, vecs):
        ids = tok(text, add_special_tokens=True, truncation=False)["input_ids"]
        assert len(ids) <= model.max_seq_length, (text, len(ids))
        out.append({"text": text, "ids": ids, "embedding": [round(float(v), 7) for v in vec]})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"model": "all-MiniLM-L6-v2", "reference": "sentence-transformers (CPU, float32)",
                   "texts": out}, f, ensure_ascii=False, indent=0)
    print(f"wrote {len(out)} texts to {OUT}")


if __name__ == "__main__":
    main()
