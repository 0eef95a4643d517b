//! Arbitrary bytes as a GGUF file: every error must be an error, never a panic or an
//! out-of-bounds read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_model::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = GgufFile::from_bytes(data.to_vec()) {
        for info in f.tensors.values() {
            let _ = f.tensor_bytes(info).len();
        }
        let _ = f.get_str("general.architecture");
        let _ = f.get_u64("general.alignment");
        let _ = sluice_model::Tokenizer::from_gguf(&f);
    }
});
