//! A small run of every benchmark, so `make test` keeps them working; the figures of a run
//! this size mean nothing and are not checked against targets.

use contactier_bench::{Backend, Config, EmptyServer};
use std::time::Duration;

#[tokio::test]
async fn every_benchmark_runs_on_both_backends() {
    let warn_dir = std::env::temp_dir().join(format!("contactier-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&warn_dir).unwrap();
    let cfg = Config {
        rows: 3_000,
        load_time: Duration::from_millis(300),
        concurrency: 8,
        alert_contacts: 2_100,
        backends: vec![Backend::Postgres, Backend::Sqlite],
        empty_server: EmptyServer::InProcess,
        instant_accounts: vec![25, 50],
        pgbench_seconds: 1,
        warn_dir: Some(warn_dir.clone()),
    };
    let report = contactier_bench::run(&cfg).await.expect("the benchmarks run");
    for what in [
        "CSV import",
        "CSV import of 3000 rows, lead scoring on",
        "RecordContactEvents",
        "SearchContacts, 3 pages of 1,000",
        "bulk status change",
        "update date",
        "GetUsage: peak",
        "GetContact: peak",
        "status change -> alert",
        "idle memory, billing",
        "one instant, 25 accounts",
        "invoice run, 5 upgraded accounts",
    ] {
        for backend in ["PostgreSQL", "SQLite"] {
            assert!(
                report.rows.iter().any(|r| r.what.starts_with(what) && r.backend == backend),
                "no {what} on {backend}"
            );
        }
    }
    // The load runs at half of peak are held without a single error.
    for r in report.rows.iter().filter(|r| r.what.contains("at half of peak")) {
        assert!(r.value.ends_with(" 0 errors"), "{} on {}: {}", r.what, r.backend, r.value);
    }
    assert!(report.rows.iter().any(|r| r.what.starts_with("pgbench simple-update")));
    // Every size on PostgreSQL with how an account's time grew across them; SQLite the first.
    let sizes = |backend: &str| -> Vec<&str> {
        let rows = report.rows.iter().filter(|r| r.backend == backend);
        rows.filter(|r| r.what.starts_with("one instant")).map(|r| r.what.as_str()).collect()
    };
    assert_eq!(
        sizes("PostgreSQL"),
        [
            "one instant, 25 accounts (1000 pending contacts)",
            "one instant, 50 accounts (1000 pending contacts)",
            "one instant: an account's time from 25 to 50 accounts"
        ]
    );
    assert_eq!(sizes("SQLite"), ["one instant, 25 accounts (1000 pending contacts)"]);
    // The import's own floor: PostgreSQL only, with every row the import left copied.
    let floor = report
        .rows
        .iter()
        .find(|r| r.what.contains("against its own rows COPYed"))
        .expect("the import's floor on PostgreSQL");
    assert_eq!(floor.backend, "PostgreSQL");
    let scored = report.rows.iter().find(|r| r.what.contains("lead scoring on, against its own rows COPYed"));
    assert_eq!(scored.map(|r| r.backend), Some("PostgreSQL"), "the scored import's floor");
    assert!(report.markdown().lines().count() > 20);
    // Every service of every run kept its warnings where the run was told to.
    let kept: Vec<String> = std::fs::read_dir(&warn_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for service in ["contacts", "marketing-status", "billing", "notification"] {
        let runs = kept.iter().filter(|f| f.starts_with(&format!("{service}-"))).count();
        // The main runs on both backends, two instants on PostgreSQL and one on SQLite.
        assert_eq!(runs, 5, "{service}'s warnings in {kept:?}");
    }
    let _ = std::fs::remove_dir_all(&warn_dir);
}
