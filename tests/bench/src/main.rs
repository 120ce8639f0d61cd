//! `activity-bench <scenario> [--quick] [--n N]` against the cluster of `$KUBECONFIG`; `report`
//! runs every scenario at its full sizes with repeats and writes `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use activity_bench::load::{self, LoadPlan};
use activity_bench::scenarios::{self, DeadlineKind};
use activity_bench::{Cluster, RunResult, repo_root};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks of activity-operator on a local control plane, side by side with Jobs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Deadline enforcement latency: activities vs Jobs with activeDeadlineSeconds.
    Deadline {
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value_t = 100)]
        n: usize,
        /// heartbeatTimeout / startToCloseTimeout / activeDeadlineSeconds, seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        #[arg(long, value_enum, default_value_t = DeadlineKind::Heartbeat)]
        kind: DeadlineKind,
        /// Activities only: skip the Jobs run side by side (for iterating on the operator).
        #[arg(long)]
        no_jobs: bool,
    },
    /// N trivial activities (and Jobs) at once: time to every pod and to every success.
    Throughput {
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value_t = 100)]
        n: usize,
        /// Activities only: skip the Jobs run side by side (for iterating on the operator).
        #[arg(long)]
        no_jobs: bool,
    },
    /// Operator writes per attempt and per heartbeat, heartbeat PATCH latency, operator RSS.
    Writes {
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value_t = 100)]
        n: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// `kubectl apply` to pod, one activity at a time on an idle cluster.
    Apply {
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value_t = 30)]
        m: usize,
    },
    /// Many live activities with simulated workers heartbeating at a steady interval; bursts;
    /// operator restart at the largest size.
    Load {
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        opts: LoadOpts,
    },
    /// RSS and idle CPU of `activity-worker exec` (`ACTIVITY_WORKER_BIN`, else the debug build).
    Worker {
        #[arg(long, default_value_t = 30)]
        idle_secs: u64,
    },
    /// Every scenario at its full sizes, `--repeats` times each; writes the Markdown report.
    Report {
        /// Scenarios to run (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "deadline,throughput,writes,apply,worker,load")]
        scenarios: Vec<String>,
        #[command(flatten)]
        load: LoadOpts,
        #[arg(long, default_value_t = 30)]
        apply_m: usize,
        #[arg(long, default_value = "docs/benchmarks.md")]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Sizes for `deadline` (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
        deadline_n: Vec<usize>,
        #[arg(long, default_value_t = 1000)]
        throughput_n: usize,
        #[arg(long, default_value_t = 100)]
        writes_n: usize,
        /// The command line to print in the report.
        #[arg(long, default_value = "make bench")]
        command: String,
        /// Also render the results printed in these earlier bench logs (a run cut short, or
        /// scenarios run separately), before the ones of this run.
        #[arg(long)]
        from_log: Vec<PathBuf>,
    },
}

#[derive(clap::Args, Clone)]
struct LoadOpts {
    /// Live activities at each step of `load` (ascending, comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    load_sizes: Vec<usize>,
    /// Heartbeat intervals driven at each step, seconds.
    #[arg(long, value_delimiter = ',', default_value = "10,30")]
    load_intervals: Vec<u64>,
    /// Concurrent workers of the closed-loop heartbeat bursts.
    #[arg(long, value_delimiter = ',', default_value = "1,100,500")]
    bursts: Vec<usize>,
    #[arg(long, default_value_t = 20)]
    burst_secs: u64,
    /// Skip the operator restart at the largest step.
    #[arg(long)]
    no_restart: bool,
    /// Measuring window of each interval, seconds (default: six heartbeats, at least 60 s).
    #[arg(long)]
    load_window_secs: Option<u64>,
}

impl LoadOpts {
    fn plan(&self, quick: bool) -> LoadPlan {
        if quick {
            return LoadPlan::quick();
        }
        LoadPlan {
            sizes: self.load_sizes.clone(),
            intervals: self.load_intervals.clone(),
            bursts: self.bursts.clone(),
            burst_window: std::time::Duration::from_secs(self.burst_secs),
            window: self.load_window_secs.map(std::time::Duration::from_secs),
            restart: !self.no_restart,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cluster = Cluster::from_env().await?;
    match cli.cmd {
        Cmd::Deadline { quick, n, timeout, kind, no_jobs } => {
            let (n, timeout) = if quick { (3, 2) } else { (n, timeout) };
            scenarios::deadline(&cluster, n, timeout, kind, !no_jobs).await?.print();
        }
        Cmd::Throughput { quick, n, no_jobs } => {
            scenarios::throughput(&cluster, if quick { 3 } else { n }, !no_jobs).await?.print();
        }
        Cmd::Writes { quick, n, rounds } => {
            let (n, rounds) = if quick { (3, 2) } else { (n, rounds) };
            scenarios::writes(&cluster, n, rounds).await?.print();
        }
        Cmd::Apply { quick, m } => {
            load::apply(&cluster, if quick { 3 } else { m }).await?.print();
        }
        Cmd::Load { quick, opts } => {
            for res in load::load(&cluster, &opts.plan(quick)).await? {
                res.print();
            }
        }
        Cmd::Worker { idle_secs } => {
            load::worker(&cluster, std::time::Duration::from_secs(idle_secs)).await?.print();
        }
        Cmd::Report {
            scenarios: which,
            load: load_opts,
            apply_m,
            out,
            repeats,
            deadline_n,
            throughput_n,
            writes_n,
            command,
            from_log,
        } => {
            let started = Instant::now();
            let on = |s: &str| which.iter().any(|w| w == s);
            let mut groups: Vec<Vec<RunResult>> = Vec::new();
            for log in &from_log {
                let text = std::fs::read_to_string(log)?;
                for res in RunResult::parse_printed(&text) {
                    match groups.iter_mut().find(|g| g.first().is_some_and(|f| f.title == res.title)) {
                        Some(g) => g.push(res),
                        None => groups.push(vec![res]),
                    }
                }
            }
            for &n in deadline_n.iter().filter(|_| on("deadline")) {
                for kind in [DeadlineKind::Heartbeat, DeadlineKind::StartToClose] {
                    // Start-to-close at one N only (100, else the largest): the mechanism is the
                    // same timer, and a run at 1,000 takes minutes because of the Jobs.
                    let s2c_n = if deadline_n.contains(&100) { Some(&100) } else { deadline_n.iter().max() };
                    if kind == DeadlineKind::StartToClose && Some(&n) != s2c_n {
                        continue;
                    }
                    let timeout = if n >= 1000 {
                        30
                    } else if n >= 100 {
                        10
                    } else {
                        3
                    };
                    let mut runs = Vec::new();
                    let runs_n = big_once(n, repeats);
                    for r in 0..runs_n {
                        eprintln!("bench: deadline {kind:?} N={n} run {}/{runs_n}", r + 1);
                        let res = scenarios::deadline(&cluster, n, timeout, kind, true).await?;
                        res.print();
                        runs.push(res);
                    }
                    groups.push(runs);
                }
            }
            let mut runs = Vec::new();
            let runs_n = big_once(throughput_n, repeats);
            for r in (0..runs_n).filter(|_| on("throughput")) {
                eprintln!("bench: throughput N={throughput_n} run {}/{runs_n}", r + 1);
                let res = scenarios::throughput(&cluster, throughput_n, true).await?;
                res.print();
                runs.push(res);
            }
            groups.push(runs);
            let mut runs = Vec::new();
            for r in (0..repeats).filter(|_| on("writes")) {
                eprintln!("bench: writes N={writes_n} run {}/{repeats}", r + 1);
                let res = scenarios::writes(&cluster, writes_n, 3).await?;
                res.print();
                runs.push(res);
            }
            groups.push(runs);
            let mut runs = Vec::new();
            for r in (0..repeats).filter(|_| on("apply")) {
                eprintln!("bench: apply M={apply_m} run {}/{repeats}", r + 1);
                let res = load::apply(&cluster, apply_m).await?;
                res.print();
                runs.push(res);
            }
            groups.push(runs);
            let mut runs = Vec::new();
            for r in (0..repeats).filter(|_| on("worker")) {
                eprintln!("bench: worker run {}/{repeats}", r + 1);
                let res = load::worker(&cluster, std::time::Duration::from_secs(30)).await?;
                res.print();
                runs.push(res);
            }
            groups.push(runs);
            // The load scenario runs once: it is long, and its steps are the repeats of interest.
            if on("load") {
                eprintln!("bench: load (once)");
                for res in load::load(&cluster, &load_opts.plan(false)).await? {
                    res.print();
                    groups.push(vec![res]);
                }
            }
            let md = render(&groups, repeats, &command, started.elapsed().as_secs(), &from_log);
            let path = if out.is_absolute() { out } else { repo_root().join(out) };
            let existing = std::fs::read_to_string(&path).unwrap_or_default();
            let md = keep_analysis(&existing, md);
            std::fs::write(&path, md)?;
            eprintln!("bench: wrote {}", path.display());
        }
    }
    Ok(())
}

/// Sizes of 1,000 and more run once: each such run takes minutes on the local control plane.
fn big_once(n: usize, repeats: usize) -> usize {
    if n >= 1000 { 1 } else { repeats }
}

const ANALYSIS_BEGIN: &str = "<!-- analysis: kept across regenerations -->";

/// The hand-written analysis section (after [`ANALYSIS_BEGIN`]) of the previous report is kept.
fn keep_analysis(existing: &str, mut generated: String) -> String {
    match existing.split_once(ANALYSIS_BEGIN) {
        Some((_, rest)) => {
            generated.push_str(ANALYSIS_BEGIN);
            generated.push_str(rest);
        }
        None => {
            generated.push_str(ANALYSIS_BEGIN);
            generated.push_str("\n\n## Analysis\n\n(none yet)\n");
        }
    }
    generated
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn render(groups: &[Vec<RunResult>], repeats: usize, command: &str, wall: u64, from_log: &[PathBuf]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `{command}` (`tests/bench`, `activity-bench report`): regenerate rather than edit the \
         tables; the analysis at the end is kept across regenerations.\n"
    );
    let _ = writeln!(md, "## Machine and run\n");
    let _ = writeln!(md, "- date (UTC): {}", sh("date -u +%Y-%m-%dT%H:%MZ"));
    let _ = writeln!(md, "- CPUs (`nproc`): {}", sh("nproc"));
    let _ = writeln!(md, "- CPU: {}", sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"));
    let _ = writeln!(md, "- memory: {}", sh("grep MemTotal /proc/meminfo | tr -s ' '"));
    let _ = writeln!(md, "- kernel: {}", sh("uname -sr"));
    let exe = activity_bench::operator_exe();
    let build = if exe.components().any(|c| c.as_os_str() == "release") { "release build" } else { "debug build" };
    let _ = writeln!(md, "- operator binary: `{}` ({build})", exe.display());
    let _ = writeln!(
        md,
        "- cluster: the local control plane (`deploy/local/cluster.sh`: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, process node), a cluster of its own for the bench"
    );
    let _ = writeln!(
        md,
        "- repeats per scenario: {repeats} (each row: min / median / max over the repeats), except N ≥ 1,000 and the \
         heartbeat load, bursts and restart, which run once (min = median = max); whole run {wall} s\n"
    );
    for log in from_log {
        let _ = writeln!(
            md,
            "- merged: the tables of the runs printed in `{}` (an earlier invocation; values at its printed \
             precision), then this run's (whole run {wall} s is this invocation's)\n",
            log.display()
        );
    }
    for runs in groups {
        let Some(first) = runs.first() else { continue };
        let _ = writeln!(md, "## {}\n", first.title);
        let _ = writeln!(md, "| metric | min | median | max | unit |\n|---|---:|---:|---:|---|");
        for m in &first.metrics {
            let mut vals: Vec<f64> = runs.iter().filter_map(|r| r.get(&m.name)).collect();
            vals.sort_by(|a, b| a.total_cmp(b));
            let med = vals[vals.len() / 2];
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                m.name.trim(),
                fmt(vals[0]),
                fmt(med),
                fmt(vals[vals.len() - 1]),
                m.unit
            );
        }
        for n in &first.notes {
            let _ = writeln!(md, "\nNote: {n}.");
        }
        let _ = writeln!(md);
    }
    md
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}
