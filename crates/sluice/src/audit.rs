//! `sluice audit verify | export`: check the audit chain, or write it out as JSON lines.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use sluice_govern::Tip;

/// Arguments of `sluice audit`.
#[derive(Args)]
pub struct AuditArgs {
    /// The store.
    #[arg(long, global = true, default_value = "sqlite://data/sluice.db")]
    database_url: String,
    /// The checkpoint secret (the same file `sluice serve` uses); its `.tip` sibling is read too.
    #[arg(long, global = true, default_value = "data/audit.key")]
    audit_secret_file: PathBuf,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the chain and the checkpoints; report the first broken link (exit status 1).
    Verify,
    /// Write entries as JSON lines.
    Export {
        /// From (Unix seconds; default: the beginning).
        #[arg(long)]
        from: Option<i64>,
        /// To (Unix seconds; default: now).
        #[arg(long)]
        to: Option<i64>,
        /// Only entries about this tenant (by name).
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// Runs `sluice audit`; returns whether the chain verified (export always does).
pub async fn run(args: AuditArgs) -> anyhow::Result<bool> {
    let store = sluice_store::Store::open(&args.database_url)
        .await
        .with_context(|| format!("cannot open the store {}", crate::serve::redact(&args.database_url)))?;
    let mut out = std::io::stdout().lock();
    match args.command {
        AuditCommand::Verify => {
            let secret = std::fs::read_to_string(&args.audit_secret_file)
                .with_context(|| format!("cannot read the audit secret {}", args.audit_secret_file.display()))?;
            let secret = secret.trim().as_bytes().to_vec();
            let tip = Tip::read(&args.audit_secret_file.with_extension("tip"), &secret);
            let v = sluice_govern::audit::verify(&store, &secret, tip.as_ref()).await?;
            match &v.first_broken {
                None => writeln!(out, "ok: {} entries, {} checkpoints, tip file {}", v.entries, v.checkpoints, if tip.is_some() { "matches" } else { "absent" })?,
                Some((seq, why)) => writeln!(out, "BROKEN at entry {seq}: {why} ({} entries read, {} checkpoints)", v.entries, v.checkpoints)?,
            }
            Ok(v.first_broken.is_none())
        }
        AuditCommand::Export { from, to, tenant } => {
            let tenant_id = match tenant {
                Some(name) => Some(store.tenant_by_name(&name).await?.with_context(|| format!("no tenant named {name:?}"))?.id),
                None => None,
            };
            let from = from.map_or(0, |s| s * 1000);
            let to = to.map_or(sluice_store::now_ms() + 1, |s| s * 1000);
            for e in store.audit_range(from, to, tenant_id.as_deref()).await? {
                let body: serde_json::Value = serde_json::from_str(&e.entry.body).unwrap_or(serde_json::Value::String(e.entry.body.clone()));
                let line = serde_json::json!({"seq": e.seq, "ts_ms": e.entry.ts_ms, "kind": e.entry.kind, "tenant_id": e.entry.tenant_id,
                    "actor": e.entry.actor, "body": body, "prev_hash": e.prev_hash, "hash": e.hash});
                writeln!(out, "{line}")?;
            }
            Ok(true)
        }
    }
}
