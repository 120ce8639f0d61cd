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
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000,10000")]
    load_sizes: Vec<usize>,
    /// Heartbeat intervals driven at each step, seconds.
    #[arg(long, value_delimiter = ',', default_value = "10,30")]
    load_intervals: Vec<u64>,
    /// Heartbeat/Lease window pairs at each step and interval.
    #[arg(long, default_value_t = 3)]
    load_pairs: usize,
    /// Length of each heartbeat or Lease window, seconds (default: one interval, at least 20 s).
    #[arg(long)]
    load_window_secs: Option<u64>,
    /// Length of the idle window at each step, seconds.
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Pause after each window, seconds.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// Concurrent workers of the closed-loop heartbeat bursts.
    #[arg(long, value_delimiter = ',', default_value = "1,100,500")]
    bursts: Vec<usize>,
    #[arg(long, default_value_t = 20)]
    burst_secs: u64,
    /// Skip the closed-loop bursts.
    #[arg(long)]
    no_bursts: bool,
    /// Skip the operator restart at the largest step.
    #[arg(long)]
    no_restart: bool,
    /// The etcd growth run: at the step of this size (0: none), heartbeats for `growth_secs`.
    #[arg(long, default_value_t = 1000)]
    growth_n: usize,
    #[arg(long, default_value_t = 10)]
    growth_interval: u64,
    #[arg(long, default_value_t = 900)]
    growth_secs: u64,
    /// Between two samples of etcd's size, seconds.
    #[arg(long, default_value_t = 30)]
    growth_every: u64,
}

impl LoadOpts {
    fn plan(&self, quick: bool) -> LoadPlan {
        if quick {
            return LoadPlan::quick();
        }
        let secs = std::time::Duration::from_secs;
        LoadPlan {
            sizes: self.load_sizes.clone(),
            intervals: self.load_intervals.clone(),
            pairs: self.load_pairs,
            window: self.load_window_secs.map(secs),
            idle: secs(self.idle_secs),
            settle: secs(self.settle_secs),
            bursts: if self.no_bursts { Vec::new() } else { self.bursts.clone() },
            burst_window: secs(self.burst_secs),
            growth: (self.growth_n > 0).then(|| load::Growth {
                n: self.growth_n,
                interval: secs(self.growth_interval),
                duration: secs(self.growth_secs),
                every: secs(self.growth_every),
            }),
            restart: !self.no_restart,
        }
    }
}

/// Results in groups of equal titles (the repeats of one table), in order of first appearance.
fn group_by_title(groups: &mut Vec<Vec<RunResult>>, results: impl IntoIterator<Item = RunResult>) {
    for res in results {
        match groups.iter_mut().find(|g| g.first().is_some_and(|f| f.title == res.title)) {
            Some(g) => g.push(res),
            None => groups.push(vec![res]),
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
                group_by_title(&mut groups, RunResult::parse_printed(&text));
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
                let results = load::load(&cluster, &load_opts.plan(false)).await?;
                for res in &results {
                    res.print();
                }
                group_by_title(&mut groups, results);
            }
            let md = render(&groups, repeats, &command, started.elapsed().as_secs(), &from_log, &cluster);
            let path = if out.is_absolute() { out } else { repo_root().join(out) };
            let existing = std::fs::read_to_string(&path).unwrap_or_default();
            let md = splice(&existing, &md);
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

const BEGIN: &str = "<!-- generated by activity-bench report: begin -->";
const END: &str = "<!-- generated by activity-bench report: end -->";

/// The report: the previous one's hand-written text around the generated part (between [`BEGIN`]
/// and [`END`]) is kept; without those markers, the generated part alone.
fn splice(existing: &str, generated: &str) -> String {
    match existing.split_once(BEGIN).and_then(|(before, rest)| Some((before, rest.split_once(END)?.1))) {
        Some((before, after)) => format!("{before}{BEGIN}\n{generated}{END}{after}"),
        None => format!("{BEGIN}\n{generated}{END}\n"),
    }
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The generated part of the report: the machine, then a table per group of runs (min / median /
/// max over the runs, or the value of a single run) with the notes of every run.
fn render(
    groups: &[Vec<RunResult>],
    repeats: usize,
    command: &str,
    wall: u64,
    from_log: &[PathBuf],
    cluster: &Cluster,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Generated by `{command}` (`tests/bench`, `activity-bench report`): regenerate rather than edit \
         the tables; the text outside them is kept across regenerations.\n"
    );
    let _ = writeln!(md, "### Machine and run\n");
    let _ = writeln!(md, "- date (UTC): {}", sh("date -u +%Y-%m-%dT%H:%MZ"));
    let _ = writeln!(
        md,
        "- commit: {}",
        sh("git rev-parse --short HEAD; git diff --quiet HEAD || echo '(with local changes)'").replace('\n', " ")
    );
    let _ = writeln!(md, "- CPUs (`nproc`): {}", sh("nproc"));
    let _ = writeln!(md, "- CPU: {}", sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"));
    let _ = writeln!(md, "- memory: {}", sh("grep MemTotal /proc/meminfo | tr -s ' '"));
    let _ = writeln!(md, "- kernel: {}", sh("uname -sr"));
    if let Ok(bin) = cluster.local.bin_dir() {
        let version =
            |tool: &str, args: &str| sh(&format!("'{}' {args} 2>/dev/null | head -1", bin.join(tool).display()));
        let _ = writeln!(
            md,
            "- kube-apiserver: {}; etcd: {}",
            version("kube-apiserver", "--version"),
            version("etcd", "--version")
        );
    }
    let exe = activity_bench::operator_exe();
    let build = if exe.components().any(|c| c.as_os_str() == "release") { "release build" } else { "debug build" };
    let _ = writeln!(md, "- operator binary: `{}` ({build})", exe.display());
    let _ = writeln!(
        md,
        "- cluster: the local control plane (`deploy/local/cluster.sh`: etcd, kube-apiserver, \
         kube-controller-manager, kube-scheduler, process node) on this machine, a cluster of its own for \
         the bench; the bench's driver runs on the same cores"
    );
    let _ = writeln!(
        md,
        "- repeats per scenario: {repeats} (min / median / max over the repeats), except N ≥ 1,000 and \
         the `load` scenario, which run once (its heartbeat/Lease tables: min / median / max over the \
         window pairs); whole run {wall} s"
    );
    for log in from_log {
        let _ = writeln!(
            md,
            "- merged: the tables of the runs printed in `{}` (an earlier invocation; values at its \
             printed precision), then this run's",
            log.display()
        );
    }
    let _ = writeln!(md);
    for runs in groups {
        let Some(first) = runs.first() else { continue };
        let _ = writeln!(md, "### {}\n", first.title);
        if runs.len() == 1 {
            let _ = writeln!(md, "| metric | value | unit |\n|---|---:|---|");
        } else {
            let _ = writeln!(md, "| metric | min | median | max | unit |\n|---|---:|---:|---:|---|");
        }
        for m in &first.metrics {
            let mut vals: Vec<f64> = runs.iter().filter_map(|r| r.get(&m.name)).collect();
            vals.sort_by(|a, b| a.total_cmp(b));
            let (Some(min), Some(max)) = (vals.first(), vals.last()) else { continue };
            let name = m.name.trim();
            if runs.len() == 1 {
                let _ = writeln!(md, "| {name} | {} | {} |", fmt(*min), m.unit);
            } else {
                let med = vals[vals.len() / 2];
                let _ = writeln!(md, "| {name} | {} | {} | {} | {} |", fmt(*min), fmt(med), fmt(*max), m.unit);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for n in runs.iter().flat_map(|r| &r.notes).filter(|n| seen.insert(n.as_str())) {
            let _ = writeln!(md, "\nNote: {n}.");
        }
        let _ = writeln!(md);
    }
    md
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}
