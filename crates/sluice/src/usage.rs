//! `sluice usage`: the ledger as a table — requests, tokens and cost by tenant, key, feature,
//! model or backend, per hour or day.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use sluice_store::GroupBy;

/// Arguments of `sluice usage`.
#[derive(Args)]
pub struct UsageArgs {
    /// The store (the same URL `sluice serve --database-url` uses).
    #[arg(long, default_value = "sqlite://data/sluice.db")]
    database_url: String,
    /// Group by tenant, key, feature, model or backend.
    #[arg(long, default_value = "tenant")]
    group_by: String,
    /// Time buckets: hour or day.
    #[arg(long, default_value = "day")]
    granularity: String,
    /// Hours back from now to report.
    #[arg(long, default_value_t = 24)]
    hours: i64,
    /// Only this tenant (by name).
    #[arg(long)]
    tenant: Option<String>,
}

/// Runs `sluice usage`.
pub async fn run(args: UsageArgs) -> anyhow::Result<()> {
    let group_by = match args.group_by.as_str() {
        "tenant" => GroupBy::Tenant,
        "key" => GroupBy::Key,
        "feature" => GroupBy::Feature,
        "model" => GroupBy::Model,
        "backend" => GroupBy::Backend,
        other => anyhow::bail!("--group-by must be tenant, key, feature, model or backend, not {other:?}"),
    };
    let bucket = match args.granularity.as_str() {
        "hour" => 3_600_000,
        "day" => 86_400_000,
        other => anyhow::bail!("--granularity must be hour or day, not {other:?}"),
    };
    let store = sluice_store::Store::open(&args.database_url)
        .await
        .with_context(|| format!("cannot open the store {}", crate::serve::redact(&args.database_url)))?;
    let tenants: std::collections::HashMap<String, String> = store.tenants().await?.into_iter().map(|t| (t.id, t.name)).collect();
    let tenant_id = match &args.tenant {
        Some(name) => Some(tenants.iter().find(|(_, n)| *n == name).map(|(id, _)| id.clone()).with_context(|| format!("no tenant named {name:?}"))?),
        None => None,
    };
    let to = sluice_store::now_ms();
    let from = to - args.hours.max(1) * 3_600_000;
    let lines = store.usage(from, to, bucket, group_by, tenant_id.as_deref()).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<17} {:<24} {:>9} {:>12} {:>10} {:>12} {:>12}", "bucket (UTC)", args.group_by, "requests", "prompt", "cached", "completion", "cost USD")?;
    let (mut r, mut p, mut c, mut o, mut cost) = (0, 0, 0, 0, 0);
    for l in &lines {
        let group = if group_by == GroupBy::Tenant { tenants.get(&l.group).cloned().unwrap_or_else(|| l.group.clone()) } else { l.group.clone() };
        writeln!(
            out,
            "{:<17} {:<24} {:>9} {:>12} {:>10} {:>12} {:>12.6}",
            bucket_label(l.bucket_ms, bucket),
            group,
            l.requests,
            l.prompt_tokens,
            l.cached_tokens,
            l.completion_tokens,
            l.cost_micros as f64 / 1e6
        )?;
        r += l.requests;
        p += l.prompt_tokens;
        c += l.cached_tokens;
        o += l.completion_tokens;
        cost += l.cost_micros;
    }
    writeln!(out, "{:<17} {:<24} {:>9} {:>12} {:>10} {:>12} {:>12.6}", "total", "", r, p, c, o, cost as f64 / 1e6)?;
    Ok(())
}

fn bucket_label(ms: i64, bucket: i64) -> String {
    let (day, _) = sluice_govern::periods(ms).0;
    let date = day.trim_start_matches('d').to_string();
    if bucket < 86_400_000 { format!("{date} {:02}:00", (ms / 3_600_000) % 24) } else { date }
}
