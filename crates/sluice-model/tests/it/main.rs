//! Integration tests of the model crate against the real models (fetched by `make test`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code may unwrap")]

mod common;
mod sanity;
mod golden;
mod hf_dir;
mod arch;
mod batch;
mod fuzz_smoke;
mod embeddings;
