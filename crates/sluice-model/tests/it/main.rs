//! Integration tests of the model crate against the real models (fetched by `make test`).

mod common;
mod sanity;
mod golden;
