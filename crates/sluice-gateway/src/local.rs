//! Requests this process serves itself, outside the model routes (embeddings, collections):
//! admitted against the caller's rate limits like a routed request and settled exactly once —
//! one ledger row, one log line — however they end.

use crate::error::GatewayError;
use crate::ticket::{Admission, RequestContext, Ticket, UsageCount};
use crate::{Gateway, request_id};

/// An admitted local request; dropping it unfinished settles it as `client_gone`.
#[derive(Debug)]
pub struct LocalRequest {
    ticket: Ticket,
}

impl Gateway {
    /// Admits a local request for `model` (both the route and the backend in the ledger) that
    /// reads `prompt_tokens`. Local models carry no price: budgets are untouched, request and
    /// token rate limits and concurrency apply. Returns once its ledger row is written.
    pub async fn admit_local(&self, ctx: &RequestContext, model: &str, prompt_tokens: u64) -> Result<LocalRequest, GatewayError> {
        let id = if ctx.request_id.is_empty() { request_id() } else { ctx.request_id.clone() };
        let mut ticket = Ticket::new(ctx, id, self.governance.clone());
        let s = &mut ticket.settled;
        s.route = model.to_string();
        s.backend = model.to_string();
        s.model = model.to_string();
        s.usage.prompt_tokens = prompt_tokens;
        if s.feature.is_empty() {
            s.feature = "unattributed".into();
        }
        if let (Some(g), Some(caller)) = (&self.governance, &s.caller) {
            let admission = Admission {
                request_id: s.request_id.clone(),
                caller: caller.clone(),
                feature: s.feature.clone(),
                route: model.to_string(),
                prompt_tokens,
                max_tokens: 0,
                worst_case_micros: 0,
            };
            let receipt = g.admit(admission).await.map_err(GatewayError::Refused)?;
            s.admitted = true;
            s.admitted_tokens = prompt_tokens;
            receipt.wait().await.map_err(GatewayError::Refused)?;
        }
        Ok(LocalRequest { ticket })
    }
}

impl LocalRequest {
    /// Its id (the ledger's request id).
    pub fn request_id(&self) -> &str {
        &self.ticket.settled.request_id
    }

    /// Settles it: `ok` for a success, else an error kind; with the tokens it read.
    pub fn finish(mut self, outcome: &'static str, status: u16, prompt_tokens: u64) {
        let usage = UsageCount { prompt_tokens, reported: true, ..UsageCount::default() };
        self.ticket.finish(outcome, status, usage, None);
    }
}
