//! Why the gateway could not answer a request. Every variant names what broke; `sluice-server`
//! turns them into OpenAI error bodies.

/// A request the gateway could not serve.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The body is not a request we can route.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// The offending parameter.
        param: Option<String>,
    },
    /// No route has this name.
    #[error("The model `{name}` does not exist. Available models: {}", available.join(", "))]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// Names that exist.
        available: Vec<String>,
    },
    /// The prompt plus the requested output fits no target's window.
    #[error(
        "This request needs about {needed} tokens (prompt estimate plus max_tokens), but the largest context window available for `{model}` is {largest} tokens. Please reduce the length of the messages or completion."
    )]
    ContextLength {
        /// The route.
        model: String,
        /// Estimated tokens needed.
        needed: u64,
        /// The largest window among the route's targets.
        largest: u32,
    },
    /// Every target was skipped before an attempt could be made.
    #[error("No backend can take a request for `{model}` now: {reasons}")]
    Unavailable {
        /// The route.
        model: String,
        /// Why each target was skipped.
        reasons: String,
        /// Seconds after which one may be back.
        retry_after: u32,
    },
    /// Admission refused it (a rate limit or a budget), before any backend was called.
    #[error("{}", .0.message)]
    Refused(crate::ticket::Refusal),
    /// Every attempt failed.
    #[error("All {attempts} attempts for `{model}` failed: {failures}")]
    Exhausted {
        /// The route.
        model: String,
        /// Attempts made.
        attempts: u32,
        /// What each attempt met, by backend.
        failures: String,
        /// The last failure was a timeout.
        timed_out: bool,
    },
}

impl GatewayError {
    /// Stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::UnknownModel { .. } => "unknown_model",
            Self::ContextLength { .. } => "context_length_exceeded",
            Self::Unavailable { .. } => "no_backend_available",
            Self::Exhausted { .. } => "backends_failed",
            Self::Refused(r) => r.code,
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Exhausted { .. } | Self::Refused(_))
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest { .. } | Self::ContextLength { .. } => 400,
            Self::UnknownModel { .. } => 404,
            Self::Unavailable { .. } => 503,
            Self::Exhausted { timed_out: true, .. } => 504,
            Self::Exhausted { .. } => 502,
            Self::Refused(r) => r.status,
        }
    }

    pub(crate) fn bad(param: &str, message: impl Into<String>) -> Self {
        Self::BadRequest { message: message.into(), param: (!param.is_empty()).then(|| param.to_string()) }
    }
}
