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
    /// No such collection or document (for this tenant).
    #[error("{0}")]
    NotFound(String),
    /// The write conflicts with what is stored (an existing name, an older version).
    #[error("{0}")]
    Conflict(String),
    /// The vector index failed.
    #[error("vector index: {0}")]
    Index(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

impl From<sqlx::Error> for RetrievalError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.to_string())
    }
}

impl From<sluice_store::StoreError> for RetrievalError {
    fn from(e: sluice_store::StoreError) -> Self {
        Self::Store(e.to_string())
    }
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
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Index(_) => "index_error",
            Self::Store(_) => "store_error",
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
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Model(_) | Self::Index(_) | Self::Store(_) => 500,
        }
    }
}
