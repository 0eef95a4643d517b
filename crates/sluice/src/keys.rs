//! `sluice keys create | list | revoke`: API keys straight in the store (the same operations as
//! the admin API, for the first keys and for scripts).

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand};
use sluice_govern::Role;

/// Arguments of `sluice keys`.
#[derive(Args)]
pub struct KeysArgs {
    /// The store (the same URL `sluice serve --database-url` uses).
    #[arg(long, global = true, default_value = "sqlite://data/sluice.db")]
    database_url: String,
    /// The audit checkpoint secret (the same file `sluice serve` uses).
    #[arg(long, global = true, default_value = "data/audit.key")]
    audit_secret_file: std::path::PathBuf,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a key (the tenant is created if new); the key is printed once.
    Create {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// admin or member.
        #[arg(long, default_value = "member")]
        role: String,
        /// A label for people.
        #[arg(long, default_value = "")]
        name: String,
        /// Expire after this many days.
        #[arg(long)]
        expires_in_days: Option<u64>,
    },
    /// List keys (never the keys themselves).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id; it stops working on the next request.
    Revoke {
        /// Key id (key_...).
        id: String,
        /// Why, shown to whoever still uses it.
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
}

/// Runs `sluice keys`.
pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let store = sluice_store::Store::open(&args.database_url)
        .await
        .with_context(|| format!("cannot open the store {}", crate::serve::redact(&args.database_url)))?;
    let secret = crate::serve::audit_secret(&args.audit_secret_file)?;
    let tip = args.audit_secret_file.with_extension("tip");
    let gov = sluice_govern::Governor::new(store.clone());
    let audit = |kind: &str, tenant: Option<&str>, body: serde_json::Value| {
        let e = sluice_govern::audit::entry(kind, tenant, Some("cli"), body);
        let (store, secret, tip) = (store.clone(), secret.clone(), tip.clone());
        async move { sluice_govern::audit::append_now(&store, &secret, Some(&tip), &[e]).await }
    };
    let mut out = std::io::stdout().lock();
    match args.command {
        KeysCommand::Create { tenant, role, name, expires_in_days } => {
            let role = Role::parse(&role).context("--role must be admin or member")?;
            gov.ensure_tenant(&tenant).await?;
            let expires = expires_in_days.map(|d| std::time::Duration::from_secs(d * 86_400));
            let k = gov.create_key(&tenant, role, &name, expires).await?;
            let body = serde_json::json!({"key_id": k.record.id, "prefix": k.record.prefix, "role": role.as_str(), "name": name});
            audit("admin.key_created", Some(&k.record.tenant_id), body).await?;
            writeln!(out, "id:     {}\ntenant: {tenant}\nrole:   {}\nkey:    {}\n(the key is shown only now)", k.record.id, role.as_str(), k.secret)?;
        }
        KeysCommand::List { tenant } => {
            let tenants: std::collections::HashMap<String, String> =
                gov.store().tenants().await?.into_iter().map(|t| (t.id, t.name)).collect();
            writeln!(out, "{:<22} {:<16} {:<7} {:<24} {:<10} name", "id", "tenant", "role", "prefix", "state")?;
            let now = sluice_store::now_ms();
            for k in gov.keys(tenant.as_deref()).await? {
                let state = match (k.revoked_ms, k.expires_ms) {
                    (Some(_), _) => "revoked",
                    (None, Some(e)) if e <= now => "expired",
                    _ => "active",
                };
                let t = tenants.get(&k.tenant_id).map_or(k.tenant_id.as_str(), String::as_str);
                writeln!(out, "{:<22} {:<16} {:<7} {:<24} {:<10} {}", k.id, t, k.role, k.prefix, state, k.name)?;
            }
        }
        KeysCommand::Revoke { id, reason } => {
            gov.revoke_key(&id, &reason).await?;
            audit("admin.key_revoked", None, serde_json::json!({"key_id": id, "reason": reason})).await?;
            writeln!(out, "revoked {id}")?;
        }
    }
    Ok(())
}
