//! A bounded smoke run of the fuzz targets' work (fuzz/fuzz_targets, run with cargo-fuzz for
//! the real thing): deterministic pseudo-random inputs and mutations of real ones through the
//! GGUF reader, both tokenizers and the chat template. Nothing may panic.

use sluice_model::ChatMessage;
use sluice_model::gguf::GgufFile;

use crate::common::{gemma3, model_path, smollm2};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `seed` with a few bytes replaced, inserted or deleted.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + self.next() % 4 {
            let at = if v.is_empty() { 0 } else { (self.next() as usize) % v.len() };
            match self.next() % 3 {
                0 if !v.is_empty() => v[at] = self.next() as u8,
                1 => v.insert(at, self.next() as u8),
                _ if !v.is_empty() => {
                    v.remove(at);
                }
                _ => {}
            }
        }
        v
    }
}

#[test]
fn gguf_reader_survives_mutated_headers() {
    let file = std::fs::read(model_path("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    // The metadata and tensor table live in the first few hundred KiB; mutate that part.
    let head = &file[..file.len().min(1 << 20)];
    let mut rng = Rng(0x5eed);
    for _ in 0..60 {
        let mut bytes = rng.mutate(head);
        let cut = (rng.next() as usize) % (bytes.len() + 1);
        bytes.truncate(cut.max(bytes.len() / 2));
        if let Ok(f) = GgufFile::from_bytes(bytes) {
            for info in f.tensors.values() {
                let _ = f.tensor_bytes(info).len();
            }
            let _ = sluice_model::Tokenizer::from_gguf(&f);
        }
    }
    for n in 0..200 {
        let _ = GgufFile::from_bytes(rng.bytes(n * 7));
    }
}

#[test]
fn tokenizers_survive_arbitrary_text_and_ids() {
    let mut rng = Rng(42);
    let seeds: [&[u8]; 4] = [
        "Hello <|im_start|>user\nhi<|im_end|> <start_of_turn>model ".as_bytes(),
        "héllo wörld 你好 🙂 \u{0}\u{7f}\t\r\n  ".as_bytes(),
        b"<|endoftext|><bos><eos><pad><unk>",
        b"1234567890 !@#$%^&*() def f(x): return x**2",
    ];
    for m in [smollm2(), gemma3()] {
        let t = &m.tokenizer;
        for i in 0..400 {
            let bytes = if i % 2 == 0 { rng.mutate(seeds[i % seeds.len()]) } else { rng.bytes(i % 97) };
            let text = String::from_utf8_lossy(&bytes);
            for special in [false, true] {
                let ids = t.encode(&text, special);
                let _ = t.decode(&ids, special);
            }
            let ids: Vec<u32> = (0..8).map(|_| (rng.next() % (t.vocab_size() as u64 + 8)) as u32).collect();
            let _ = t.decode(&ids, true);
        }
    }
}

#[test]
fn the_chat_template_survives_arbitrary_conversations() {
    let m = smollm2();
    let template = m.chat_template.as_ref().unwrap();
    let roles = ["system", "user", "assistant", "tool", "", "{{ raise_exception('x') }}"];
    let mut rng = Rng(7);
    for i in 0..300 {
        let n = (rng.next() % 5) as usize;
        let messages: Vec<ChatMessage> = (0..n)
            .map(|_| {
                let len = (rng.next() % 40) as usize;
                let content = String::from_utf8_lossy(&rng.bytes(len)).into_owned();
                ChatMessage { role: roles[(rng.next() as usize) % roles.len()].to_string(), content: format!("{{{{ {content} }}}}{i}") }
            })
            .collect();
        for add in [false, true] {
            let _ = template.render(&messages, add);
        }
    }
}
