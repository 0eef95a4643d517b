//! Errors of the retrieval layer.

/// What went wrong, with what the caller needs to say so.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RetrievalError {
    /// One input is longer than the embedding model takes.
    #[error("input {index} has {tokens} tokens; {model} takes at most {max} (set \"truncate\": true to cut it)")]
    InputTooLong {
        /// Position of the input in the request.
        index: usize,
        /// Its length in tokens.
        tokens: usize,
        /// The model's limit.
        max: usize,
        /// The model.
        model: String,
    },
    /// The request itself is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The embedding queue is full; retry later.
    #[error("the embedding queue is full; retry later")]
    Overloaded,
    /// The embedding thread has stopped.
    #[error("the embedding service has stopped")]
    Stopped,
    /// The model failed.
    #[error("embedding model error: {0}")]
    Model(String),
}

impl RetrievalError {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InputTooLong { .. } => "input_too_long",
            Self::Invalid(_) => "invalid_request",
            Self::Overloaded => "overloaded",
            Self::Stopped => "embedding_stopped",
            Self::Model(_) => "model_error",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Overloaded)
    }

    /// The HTTP status this maps to.
    pub fn status(&self) -> u16 {
        match self {
            Self::InputTooLong { .. } | Self::Invalid(_) => 400,
            Self::Overloaded | Self::Stopped => 503,
            Self::Model(_) => 500,
        }
    }
}
