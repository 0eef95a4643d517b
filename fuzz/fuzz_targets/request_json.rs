//! Arbitrary request bodies through the API's parsing and validation (chat and completions).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::{ChatCompletionRequest, CompletionRequest};
use sluice_server::params::{parse_body, validate};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_body::<ChatCompletionRequest>(data) {
        let _ = validate(&req.sampling, req.top_logprobs);
    }
    if let Ok(req) = parse_body::<CompletionRequest>(data) {
        let _ = validate(&req.sampling, req.logprobs);
    }
});
