//! pgbench on the services' PostgreSQL server: the database's own rate for a kind of work,
//! measured in the same run as what is set beside it.

use crate::procs;
use anyhow::Context;

/// pgbench's default scale: 1,000,000 accounts, about 130 MB.
pub const SCALE: u64 = 10;
/// Bytes of `pgbench_accounts` (heap and key) a unit of scale makes.
const BYTES_PER_SCALE: u64 = 15_700_000;

/// The scale whose `pgbench_accounts` is as large as `bytes`, at least [`SCALE`]: a key select
/// over a table that outgrows the server's buffers costs more than over one that fits.
pub fn scale_for(bytes: u64) -> u64 {
    bytes.div_ceil(BYTES_PER_SCALE).max(SCALE)
}

/// pgbench's built-in script `builtin` (simple-update, select-only) with `clients` clients for
/// `seconds`, with prepared statements or not, at `scale`, in a database of its own on the
/// services' PostgreSQL server; answers transactions per second.
pub async fn rate(
    builtin: &str,
    clients: usize,
    seconds: u64,
    prepared: bool,
    scale: u64,
) -> anyhow::Result<f64> {
    let pgbench = find_pgbench().context("pgbench not found (it comes with PostgreSQL's server package)")?;
    let db = format!("contactier_pgbench_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&procs::pg_url()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}"))).execute(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&admin).await?;
    let url = procs::pg_url();
    let (user, host, port) = server(&url).context("the PostgreSQL URL")?;
    let conn = |cmd: &mut tokio::process::Command| {
        cmd.args(["-h", host, "-p", port, "-U", user]);
    };
    let run = async {
        let mut init = tokio::process::Command::new(&pgbench);
        conn(&mut init);
        let out = init.args(["-i", "-q", "-s", &scale.to_string(), &db]).output().await?;
        anyhow::ensure!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
        let mut bench = tokio::process::Command::new(&pgbench);
        conn(&mut bench);
        let secs = seconds.to_string();
        let clients = clients.to_string();
        let protocol = if prepared { "prepared" } else { "simple" };
        let args = ["-n", "-M", protocol, "-b", builtin, "-c", &clients, "-j", "2", "-T", &secs, &db];
        let out = bench.args(args).output().await?;
        anyhow::ensure!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        tps(&text).with_context(|| format!("no tps in pgbench's output: {text}"))
    };
    let outcome = run.await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}"))).execute(&admin).await?;
    outcome
}

/// User, host and port of a `postgres://user@host:port/db` URL.
fn server(url: &str) -> Option<(&str, &str, &str)> {
    let rest = url.strip_prefix("postgres://")?;
    let (user, rest) = rest.split_once('@')?;
    let (host, rest) = rest.split_once(':')?;
    let port = rest.split('/').next()?;
    Some((user, host, port))
}

/// The rate from pgbench's "tps = 4912.3 (without initial connection time)" line.
fn tps(output: &str) -> Option<f64> {
    output
        .lines()
        .find(|l| l.starts_with("tps = ") && l.contains("without initial connection time"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
}

fn find_pgbench() -> Option<std::path::PathBuf> {
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("pgbench"));
    let installed = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/pgbench"));
    in_path.chain(installed).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_rate_pgbench_prints() {
        let out = "number of failed transactions: 0 (0.000%)\nlatency average = 2.03 ms\n\
                   initial connection time = 9.1 ms\ntps = 4912.345 (without initial connection time)\n";
        assert_eq!(super::tps(out), Some(4912.345));
        assert_eq!(super::tps("tps = x (without initial connection time)"), None);
        assert_eq!(super::tps(""), None);
    }

    #[test]
    fn the_select_table_grows_with_the_contacts_table() {
        assert_eq!(super::scale_for(0), super::SCALE, "never below pgbench's default");
        assert_eq!(super::scale_for(1_570_000_000), 100);
        assert_eq!(super::scale_for(1_570_000_001), 101);
    }

    #[test]
    fn reads_the_server_from_the_url() {
        assert_eq!(
            super::server("postgres://postgres@127.0.0.1:5432/test"),
            Some(("postgres", "127.0.0.1", "5432"))
        );
        assert_eq!(super::server("mysql://x"), None);
    }
}
