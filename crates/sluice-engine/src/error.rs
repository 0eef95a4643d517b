//! Errors the engine reports to its callers.

/// Why a request could not be run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The waiting queue is full; retry later.
    #[error("the engine queue is full ({capacity} requests waiting); retry later")]
    QueueFull {
        /// Queue capacity.
        capacity: usize,
    },
    /// The engine thread has stopped.
    #[error("the engine has stopped")]
    Stopped,
    /// The request is invalid for this model (e.g. longer than the context window).
    #[error("{0}")]
    InvalidRequest(String),
    /// The forward pass failed.
    #[error("model error: {0}")]
    Model(String),
}

impl EngineError {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::QueueFull { .. } => "queue_full",
            Self::Stopped => "engine_stopped",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Model(_) => "model_error",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::QueueFull { .. } | Self::Stopped)
    }
}
