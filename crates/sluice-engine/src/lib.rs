//! The engine: owns a model on a dedicated thread, samples tokens, applies stop sequences, and
//! streams each request's tokens to its caller with cancellation.

mod engine;
mod error;
pub mod sampling;
pub mod stop;

pub use engine::{EngineConfig, EngineHandle, EngineStats, Event, FinishReason, GenerateRequest, RequestStream, RequestUsage};
pub use error::EngineError;
pub use sampling::{Logprobs, SamplingParams};
