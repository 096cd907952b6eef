//! `aggd inspect`: the admin API's view of live series, printed one block per series.

use anyhow::Context;

/// Asks the admin API of the aggd `cfg` describes for the series matching `pattern` (at
/// most `limit`) and prints one block per series.
///
/// Errors: no `[admin]` (or no token) in the config, the API cannot be reached, or it
/// answers an error (its message is shown).
pub(super) fn run(cfg: &aggd::config::Config, pattern: &str, limit: usize) -> anyhow::Result<()> {
    let admin = cfg
        .admin
        .as_ref()
        .filter(|a| !a.token.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!("inspect asks the admin API: configure [admin] with a token")
        })?;
    let at = || format!("admin API at {}", admin.address);
    let body = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            reqwest::Client::new()
                .get(format!("http://{}/api/series", admin.address))
                .query(&[("match", pattern), ("limit", &limit.to_string())])
                .bearer_auth(&admin.token)
                .timeout(std::time::Duration::from_secs(30))
                .send()
                .await?
                .text()
                .await
        })
        .with_context(at)?;
    let v: serde_json::Value = serde_json::from_str(&body).with_context(at)?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("{}: {e}", at());
    }
    let series = v["series"].as_array().cloned().unwrap_or_default();
    for s in &series {
        print_series(s);
    }
    println!(
        "{} series{}",
        series.len(),
        if v["truncated"].as_bool() == Some(true) {
            format!(
                " (more match: raise --limit, at most {})",
                aggd::service::SERIES_LIMIT_MAX
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Prints one series of the API's answer: name, method and frequency (and shard and
/// owner in cluster mode), its rule, its open intervals and its last emission.
fn print_series(s: &serde_json::Value) {
    let mut line = format!(
        "{} ({} over {} s)",
        s["name"].as_str().unwrap_or(""),
        s["method"].as_str().unwrap_or(""),
        s["frequency"]
    );
    if let (Some(shard), Some(owner)) = (s.get("shard"), s.get("owner").and_then(|o| o.as_str())) {
        line.push_str(&format!(", shard {shard} owned by {owner}"));
    }
    println!("{line}");
    if let Some(r) = s.get("rule") {
        println!(
            "  rule: line {}: {}",
            r["line"],
            r["text"].as_str().unwrap_or("")
        );
    }
    for i in s["intervals"].as_array().into_iter().flatten() {
        println!(
            "  interval {}: {} from {} datapoints{}",
            i["start"],
            i["value"],
            i["datapoints"],
            if i["emitted"].as_bool() == Some(true) {
                ", emitted"
            } else {
                ""
            }
        );
    }
    match s["last_emission"].as_object() {
        Some(e) => println!("  last emission: interval {} at {}", e["interval"], e["at"]),
        None => println!("  last emission: none yet"),
    }
}
