//! Tenancy policy: API keys and who they belong to, roles, and (as they arrive) rate limits,
//! budgets and pricing. Storage is `sluice-store`'s; HTTP is `sluice-server`'s.

mod allowance;
pub mod audit;
mod auth_cache;
mod background;
pub mod journal;
mod keys;
mod ledger;
pub mod redact;
mod writer;

pub use audit::{Auditor, Tip, Verification};
pub use background::Background;
pub use keys::{AuthError, GovernError, Governor, LoggingPolicy, NewKey, Principal, Role};
pub use redact::{Finding, PiiKind, Redactor};
pub use ledger::{AdmitError, AdmitRequest, Ledger, Pending, SettleRequest, periods};
