//! `contactier-bench`: runs the benchmarks and writes BENCHMARKS.md. `make bench` builds the
//! release binaries first.

use clap::{Parser, Subcommand};
use contactier_bench::{Backend, Config, EmptyServer};
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Benchmarks of Contactier's hot paths against the services running for real")]
struct Cli {
    /// Contacts to import, change and apply an update date to (0: only the instants).
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Seconds of each load run.
    #[arg(long, default_value_t = 5)]
    load_seconds: u64,
    /// Concurrent callers of the peak-throughput runs.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Contacts of the alert-latency account.
    #[arg(long, default_value_t = 11_000)]
    alert_contacts: usize,
    /// Accounts sharing one processing instant, one run per size (comma-separated; 0 for none).
    /// PostgreSQL runs every size and how an account's time grew across them; SQLite the first.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000,100000")]
    instant_accounts: Vec<usize>,
    /// Seconds of the pgbench run the instant is compared with.
    #[arg(long, default_value_t = 20)]
    pgbench_seconds: u64,
    /// postgres, sqlite or both.
    #[arg(long, default_value = "both")]
    backends: String,
    /// Where the table goes: it replaces the table there (a partial run's table has only what
    /// it measured), keeping the notes below it. PostgreSQL is the tests' own,
    /// CONTACTIER_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test), each run
    /// in schemas of its own and pgbench in a database of its own, dropped afterwards.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: std::path::PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve only gRPC health (the empty RPC the reads are compared with).
    EmptyServer {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(std::num::NonZero::get).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1_048_576);
    format!("{cpu}, {cores} cores, {mem} GiB memory, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}

/// A directory of this run's own beside the binaries, for the services' warnings.
fn warn_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = contactier_bench::procs::bin_dir()?
        .join("bench-logs")
        .join(chrono::Utc::now().format("%Y%m%dT%H%M%S").to_string());
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn lines_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|s| s.lines().count())
        .sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::EmptyServer { listen }) = cli.command {
        return contactier_bench::serve_empty(tokio::net::TcpListener::bind(listen).await?).await;
    }
    let backends = match cli.backends.as_str() {
        "postgres" => vec![Backend::Postgres],
        "sqlite" => vec![Backend::Sqlite],
        _ => vec![Backend::Postgres, Backend::Sqlite],
    };
    let cfg = Config {
        rows: cli.rows,
        load_time: Duration::from_secs(cli.load_seconds),
        concurrency: cli.concurrency,
        alert_contacts: cli.alert_contacts,
        backends,
        empty_server: EmptyServer::Child(std::env::current_exe()?),
        instant_accounts: cli.instant_accounts.into_iter().filter(|n| *n > 0).collect(),
        pgbench_seconds: cli.pgbench_seconds,
        warn_dir: Some(warn_dir()?),
    };
    let settings = match cfg.backends.contains(&Backend::Postgres) {
        true => format!("\n{}", contactier_bench::postgres_settings().await?),
        false => String::new(),
    };
    let report = contactier_bench::run(&cfg).await?;
    if let Some(dir) = &cfg.warn_dir {
        println!("the services' warnings: {} ({} lines)", dir.display(), lines_in(dir));
    }
    let text = format!(
        "# Benchmarks\n\nMeasured {} on {}.{settings}\nEvery service ran as its own process (release build) on the backend named; the load came from\nanother process over gRPC on the loopback. `make bench` reproduces this table.\n\n{}\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine(),
        report.markdown()
    );
    let old = std::fs::read_to_string(&cli.out).unwrap_or_default();
    std::fs::write(&cli.out, contactier_bench::with_notes(&text, &old))?;
    println!("wrote {}", cli.out.display());
    Ok(())
}
