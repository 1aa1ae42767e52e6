//! Summary of the pgbench runs recorded by scripts/bench.sh.
//!
//! Input: a TSV file, one run per line:
//! `mode  clients  round  target  tps  latency_ms  failed_transactions  [user_us  sys_us]`
//! (`tps` is `NA` for a run that failed; the last two, the proxy's CPU time per transaction,
//! are `NA` for `direct` and may be missing). Targets are `direct`, `pgbouncer` and `gate`.
//!
//! Per (mode, clients): the median TPS and median average latency of each target, and the
//! ratios gate/direct, pgbouncer/direct and gate/pgbouncer, each the median of the per-round
//! TPS ratios (both runs of a pair come from the same round, so a slow phase of the shared
//! machine affects both sides of a ratio instead of one target only). Then each proxy's CPU
//! time per transaction: on a shared 2-core machine it moves far less from run to run than
//! TPS does, so it is what shows whether a change made the gateway cheaper.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Results file (TSV) written by scripts/bench.sh.
    results: PathBuf,
    /// Target: gate/pgbouncer TPS ratio at every (mode, clients).
    #[arg(long, default_value_t = 0.9)]
    target_gate_vs_pgbouncer: f64,
}

const TARGETS: [&str; 3] = ["direct", "pgbouncer", "gate"];

#[derive(Debug, Clone)]
struct Run {
    round: u32,
    tps: Option<f64>,
    latency_ms: Option<f64>,
    failed_tx: u64,
    /// The proxy's CPU time per transaction, µs: (user, system).
    cpu_us: Option<(f64, f64)>,
}

#[derive(Debug)]
struct Group {
    mode: String,
    clients: u32,
    runs: [Vec<Run>; 3],
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// Per-round ratios a/b (rounds where both ran), as (median, min, max, pairs).
fn round_ratios(a: &[Run], b: &[Run]) -> Option<(f64, f64, f64, usize)> {
    let ratios: Vec<f64> = a
        .iter()
        .filter_map(|ra| {
            let rb = b.iter().find(|rb| rb.round == ra.round)?;
            match (ra.tps, rb.tps) {
                (Some(x), Some(y)) if y > 0.0 => Some(x / y),
                _ => None,
            }
        })
        .collect();
    let m = median(&ratios)?;
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((m, min, max, ratios.len()))
}

fn parse(text: &str) -> anyhow::Result<Vec<Group>> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        anyhow::ensure!(
            f.len() >= 6,
            "line {}: expected at least 6 tab-separated fields: {line:?}",
            i + 1
        );
        let opt = |s: &str| s.parse::<f64>().ok().filter(|x| x.is_finite());
        let clients: u32 = f[1]
            .parse()
            .with_context(|| format!("line {}: clients", i + 1))?;
        let round: u32 = f[2]
            .parse()
            .with_context(|| format!("line {}: round", i + 1))?;
        let Some(t) = TARGETS.iter().position(|t| *t == f[3]) else {
            anyhow::bail!("line {}: unknown target {:?}", i + 1, f[3]);
        };
        let run = Run {
            round,
            tps: opt(f[4]),
            latency_ms: opt(f[5]),
            failed_tx: f.get(6).and_then(|s| s.parse().ok()).unwrap_or(0),
            cpu_us: f
                .get(7)
                .and_then(|u| opt(u))
                .zip(f.get(8).and_then(|s| opt(s))),
        };
        match groups
            .iter_mut()
            .find(|g| g.mode == f[0] && g.clients == clients)
        {
            Some(g) => g.runs[t].push(run),
            None => {
                let mut g = Group {
                    mode: f[0].to_string(),
                    clients,
                    runs: Default::default(),
                };
                g.runs[t].push(run);
                groups.push(g);
            }
        }
    }
    Ok(groups)
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

fn fmt_ratio(r: Option<(f64, f64, f64, usize)>) -> String {
    r.map_or_else(
        || "-".to_string(),
        |(m, lo, hi, _)| format!("{m:.3} [{lo:.2}-{hi:.2}]"),
    )
}

pub fn run(args: &ReportArgs) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(&args.results)
        .with_context(|| format!("reading {}", args.results.display()))?;
    let groups = parse(&text)?;
    anyhow::ensure!(
        !groups.is_empty(),
        "no results in {}",
        args.results.display()
    );

    println!("pgbench -S (select-only): medians over rounds; TPS excludes connection time");
    println!(
        "{:<9} {:>2} | {:>9} {:>9} {:>9} | {:>7} {:>7} {:>7} | {:<19} {:<19} {:<19}",
        "mode",
        "-c",
        "direct",
        "pgbouncer",
        "gate",
        "direct",
        "pgb",
        "gate",
        "gate/direct",
        "pgbouncer/direct",
        "gate/pgbouncer"
    );
    println!(
        "{:<9} {:>2} | {:>29} | {:>23} | median of per-round TPS ratios [min-max]",
        "", "", "TPS (median)", "latency ms (median)"
    );
    println!("{}", "-".repeat(139));
    let mut all_ok = true;
    let mut checks = Vec::new();
    let mut problems = Vec::new();
    for g in &groups {
        let tps: Vec<Option<f64>> = g
            .runs
            .iter()
            .map(|r| median(&r.iter().filter_map(|x| x.tps).collect::<Vec<_>>()))
            .collect();
        let lat: Vec<Option<f64>> = g
            .runs
            .iter()
            .map(|r| median(&r.iter().filter_map(|x| x.latency_ms).collect::<Vec<_>>()))
            .collect();
        let [direct, pgb, gate] = &g.runs;
        let gd = round_ratios(gate, direct);
        let pd = round_ratios(pgb, direct);
        let gp = round_ratios(gate, pgb);
        println!(
            "{:<9} {:>2} | {:>9} {:>9} {:>9} | {:>7} {:>7} {:>7} | {:<19} {:<19} {:<19}",
            g.mode,
            g.clients,
            fmt_opt(tps[0], 0),
            fmt_opt(tps[1], 0),
            fmt_opt(tps[2], 0),
            fmt_opt(lat[0], 3),
            fmt_opt(lat[1], 3),
            fmt_opt(lat[2], 3),
            fmt_ratio(gd),
            fmt_ratio(pd),
            fmt_ratio(gp),
        );
        for (t, runs) in TARGETS.iter().zip(&g.runs) {
            let failed_runs = runs.iter().filter(|r| r.tps.is_none()).count();
            let failed_tx: u64 = runs.iter().map(|r| r.failed_tx).sum();
            if failed_runs > 0 || failed_tx > 0 {
                problems.push(format!(
                    "{} -c {} {t}: {failed_runs} of {} runs failed, {failed_tx} failed transactions",
                    g.mode,
                    g.clients,
                    runs.len()
                ));
            }
        }
        let ok = gp.is_some_and(|(m, ..)| m >= args.target_gate_vs_pgbouncer);
        all_ok &= ok;
        checks.push(format!(
            "  {:<9} -c {:<2} gate/pgbouncer {:>5}  {}",
            g.mode,
            g.clients,
            gp.map_or("-".to_string(), |(m, ..)| format!("{m:.3}")),
            if ok { "PASS" } else { "MISS" }
        ));
    }
    print_cpu(&groups);
    println!();
    println!(
        "target: Gate >= {:.2} x pgbouncer-TLS (median of per-round TPS ratios)",
        args.target_gate_vs_pgbouncer
    );
    for c in checks {
        println!("{c}");
    }
    if !problems.is_empty() {
        println!();
        for p in problems {
            println!("WARNING: {p}");
        }
        all_ok = false;
    }
    Ok(all_ok)
}

/// Each proxy's CPU time per transaction (median over rounds), when the runs recorded it.
fn print_cpu(groups: &[Group]) {
    let per_target = |runs: &[Run]| {
        let user: Vec<f64> = runs.iter().filter_map(|r| r.cpu_us.map(|c| c.0)).collect();
        let sys: Vec<f64> = runs.iter().filter_map(|r| r.cpu_us.map(|c| c.1)).collect();
        median(&user).zip(median(&sys))
    };
    let rows: Vec<_> = groups
        .iter()
        .map(|g| (g, per_target(&g.runs[1]), per_target(&g.runs[2])))
        .filter(|(_, p, g)| p.is_some() || g.is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    let fmt = |c: Option<(f64, f64)>| {
        c.map_or_else(
            || "-".to_string(),
            |(u, s)| format!("{:.1} ({u:.1} + {s:.1})", u + s),
        )
    };
    println!();
    println!("proxy CPU time per transaction, µs: user + system (median over rounds)");
    println!(
        "{:<9} {:>2} | {:<22} {:<22} gate - pgbouncer",
        "mode", "-c", "pgbouncer", "gate"
    );
    for (g, p, gate) in rows {
        let diff = p.zip(gate).map_or_else(
            || "-".to_string(),
            |(p, g)| format!("{:+.1}", (g.0 + g.1) - (p.0 + p.1)),
        );
        println!(
            "{:<9} {:>2} | {:<22} {:<22} {diff}",
            g.mode,
            g.clients,
            fmt(p),
            fmt(gate)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_round_ratios() {
        let text = "simple\t1\t1\tdirect\t100\t0.1\t0\n\
                    simple\t1\t1\tgate\t50\t0.2\t0\n\
                    simple\t1\t2\tdirect\t200\t0.1\t0\n\
                    simple\t1\t2\tgate\t180\t0.2\t0\n\
                    simple\t1\t3\tdirect\t100\t0.1\t0\n\
                    simple\t1\t3\tgate\tNA\t-\t0\n";
        let g = parse(text).unwrap();
        assert_eq!(g.len(), 1);
        let [d, _, gate] = &g[0].runs;
        // Ratios per round: 0.5, 0.9 (round 3 failed): median 0.7.
        let (m, lo, hi, n) = round_ratios(gate, d).unwrap();
        assert_eq!(n, 2);
        assert!((m - 0.7).abs() < 1e-9 && (lo - 0.5).abs() < 1e-9 && (hi - 0.9).abs() < 1e-9);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        // No CPU columns in this file: none parsed.
        assert!(gate.iter().all(|r| r.cpu_us.is_none()));
    }

    #[test]
    fn proxy_cpu_columns() {
        let text = "extended\t8\t1\tdirect\t100\t0.1\t0\tNA\tNA\n\
                    extended\t8\t1\tpgbouncer\t50\t0.2\t0\t4.00\t18.50\n\
                    extended\t8\t1\tgate\t45\t0.2\t0\t9.25\t21.00\n";
        let g = parse(text).unwrap();
        let [d, p, gate] = &g[0].runs;
        assert_eq!(d[0].cpu_us, None);
        assert_eq!(p[0].cpu_us, Some((4.0, 18.5)));
        assert_eq!(gate[0].cpu_us, Some((9.25, 21.0)));
    }
}
