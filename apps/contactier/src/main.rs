//! `contactier`: runs all four services in one process.
//!
//! With no arguments it runs on SQLite files under `./data`, with a development token secret
//! kept in the data directory, and prints the addresses, a token and a grpcurl line to try.

mod chart;
mod ctl;
mod devsecret;

use anyhow::Context;
use clap::Parser;
use contactier_runtime::config::RuntimeArgs;
use contactier_runtime::host::{PeerArgs, Platform, ServiceDef};
use std::net::{IpAddr, SocketAddr};

const SERVICES: [&ServiceDef; 4] = [
    &contactier_contacts::SERVICE,
    &contactier_marketing_status::SERVICE,
    &contactier_billing::SERVICE,
    &contactier_notification::SERVICE,
];

#[derive(Parser, Debug)]
#[command(version, about = "Contactier: the four services in one process")]
struct Cli {
    /// Address the services listen on (for `ctl`: where they are).
    #[arg(long, env = "CONTACTIER_HOST", default_value = "127.0.0.1", global = true)]
    host: IpAddr,
    /// Port of the first service; the others follow (contacts, marketing-status, billing,
    /// notification). 0 lets the system pick free ports.
    #[arg(long, env = "CONTACTIER_BASE_PORT", default_value_t = 50051, global = true)]
    base_port: u16,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// A client for the jobs people do by hand (imports, status, usage, alerts, invoices, clock).
    Ctl(ctl::Ctl),
}

/// The configuration of one service inside the process: a SQLite file each in the data dir,
/// or, on PostgreSQL, a schema each in the one database.
fn service_args(runtime: &RuntimeArgs) -> RuntimeArgs {
    let mut args = runtime.clone();
    if !args.database_url.as_deref().is_some_and(|u| u.starts_with("postgres")) {
        args.database_url = None;
    }
    args.database_schema = None;
    args
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before any thread starts: a cap after glibc has made many arenas is ignored.
    let capped = cli.command.is_none()
        && contactier_runtime::malloc::cap_for(&cli.runtime.database_url_for("contactier"));
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cli, capped))
}

async fn run(cli: Cli, capped: bool) -> anyhow::Result<()> {
    if let Some(Command::Ctl(ctl)) = cli.command {
        // A command line's output may go to a pipe that closes early (`| head`): end quietly
        // as other command-line tools do, not with a panic about a broken pipe.
        #[cfg(unix)]
        // SAFETY: restoring the default disposition of SIGPIPE before any thread writes.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        let base_port = if cli.base_port == 0 { 50051 } else { cli.base_port };
        let target = ctl::Target { host: cli.host, base_port, runtime: cli.runtime };
        // One plain line saying what went wrong and what to check, and a failing exit status.
        if let Err(e) = ctl::run(ctl, &target).await {
            eprintln!("error: {}", ctl::explain(&e, &target));
            std::process::exit(1);
        }
        return Ok(());
    }
    let _telemetry = contactier_runtime::telemetry::init(
        "contactier",
        cli.runtime.json_logs(),
        cli.runtime.otlp_endpoint.as_deref(),
    )?;
    if let Some(addr) = cli.runtime.metrics_listen {
        contactier_runtime::telemetry::init_metrics(addr).await?;
    }
    contactier_runtime::malloc::announce(capped);
    if cli.runtime.listen.is_some() {
        anyhow::bail!(
            "the all-in-one binary listens on --host and --base-port; --listen is for a service binary"
        );
    }
    if cli.base_port != 0 && cli.base_port.checked_add(SERVICES.len() as u16 - 1).is_none() {
        anyhow::bail!(
            "--base-port {} leaves no room for the {} services above it",
            cli.base_port,
            SERVICES.len()
        );
    }
    std::fs::create_dir_all(&cli.runtime.data_dir)
        .with_context(|| format!("creating {}", cli.runtime.data_dir.display()))?;
    let dev_secret = match cli.runtime.jwt_secret {
        Some(_) => None,
        None => Some(devsecret::load_or_create(&cli.runtime.data_dir)?),
    };
    let platform = Platform::new(&cli.runtime, dev_secret.as_deref())?;
    platform.shutdown.trigger_on_signals();

    // Bind every listener first, so each service knows the others' real addresses.
    let mut listeners = Vec::new();
    for (i, def) in SERVICES.iter().enumerate() {
        let port = if cli.base_port == 0 { 0 } else { cli.base_port + i as u16 };
        let addr = SocketAddr::new(cli.host, port);
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("{}: binding {addr}", def.name))?;
        listeners.push(l);
    }
    let addrs: Vec<SocketAddr> =
        listeners.iter().map(tokio::net::TcpListener::local_addr).collect::<Result<_, _>>()?;
    let url = |i: usize| format!("http://{}", addrs[i]);
    let peers = PeerArgs {
        contacts_url: url(0),
        marketing_status_url: url(1),
        billing_url: url(2),
        notification_url: url(3),
    };

    print_banner(&platform, &addrs, &cli.runtime);

    let args = service_args(&cli.runtime);
    let mut tasks = tokio::task::JoinSet::new();
    for (def, listener) in SERVICES.into_iter().zip(listeners) {
        let (platform, args, peers) = (platform.clone(), args.clone(), peers.clone());
        tasks.spawn(async move { def.run(platform, &args, peers, listener).await.with_context(|| def.name) });
    }
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done.map_err(anyhow::Error::from).and_then(|r| r) {
            // One service failing stops the others: a half-running system helps nobody.
            platform.shutdown.trigger();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

fn print_banner(platform: &Platform, addrs: &[SocketAddr], runtime: &RuntimeArgs) {
    let scopes = ["read", "write", "admin", "ops"];
    let token =
        platform.authenticator.user_token("dev-account", "dev-user", &scopes, chrono::Duration::days(30));
    let storage = match runtime.database_url.as_deref() {
        Some(u) if u.starts_with("postgres") => "PostgreSQL (a schema per service)".to_owned(),
        _ => format!("SQLite files in {}", runtime.data_dir.display()),
    };
    println!(
        "Contactier is running ({storage}; clock: {}).",
        if platform.clock.is_manual() { "manual" } else { "system" }
    );
    for (def, addr) in SERVICES.iter().zip(addrs) {
        println!("  {:<17} grpc://{addr}", def.name);
    }
    println!();
    println!("Development token (account dev-account, user dev-user, scopes {}; 30 days):", scopes.join(" "));
    println!("TOKEN={token}");
    println!();
    println!("Try:");
    println!("  grpcurl -plaintext {} list", addrs[0]);
    println!("  grpcurl -plaintext {} grpc.health.v1.Health/Check", addrs[2]);
    println!(
        "  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" {} contactier.billing.v1.BillingService/ListPriceBook",
        addrs[2]
    );
    if platform.clock.is_manual() {
        println!(
            "  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" {} contactier.ops.v1.ClockService/GetTime",
            addrs[2]
        );
    }
    println!("Stop with Ctrl-C.");
}
