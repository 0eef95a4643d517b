//! The engine: owns a model, its paged KV memory and a continuous-batching scheduler on a
//! dedicated thread; samples tokens, applies stop sequences, and streams each request's tokens
//! to its caller with cancellation.

mod engine;
mod error;
pub mod metrics;
pub mod sampling;
mod sequence;
pub mod stop;
mod worker;

pub use engine::{EngineConfig, EngineHandle, EngineStats, Event, FinishReason, GenerateRequest, RequestStream, RequestUsage};
pub use error::EngineError;
pub use sampling::{Logprobs, SamplingParams};
pub use sluice_model::KvDtype;
pub use sluice_model::quant::Numerics;
