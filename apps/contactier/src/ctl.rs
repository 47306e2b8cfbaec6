//! `contactier ctl`: the jobs people do by hand, over the same gRPC APIs as every client.

use crate::chart;
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use contactier_client::{Client, Endpoints, StaticToken};
use contactier_proto::billing::v1 as bpb;
use contactier_proto::common::v1::{self as common, MarketingStatus};
use contactier_proto::contacts::v1 as cpb;
use contactier_proto::marketing_status::v1 as mpb;
use contactier_proto::notification::v1 as npb;
use contactier_proto::ops::v1 as opb;
use contactier_runtime::config::RuntimeArgs;
use contactier_runtime::host::Platform;
use cpb::import_contacts_request::Part;
use futures::StreamExt;
use std::net::IpAddr;
use std::path::PathBuf;
use tokio::io::AsyncReadExt;

#[derive(Args, Debug)]
pub struct Ctl {
    /// Bearer token; without one, a development token is made from the local secret.
    #[arg(long, env = "CONTACTIER_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Import a CSV file, with a progress bar.
    Import {
        file: PathBuf,
        /// Column=property, e.g. "E-mail=email" (repeat for each column).
        #[arg(long = "map", required = true, value_parser = parse_mapping)]
        mappings: Vec<(String, String)>,
        #[arg(long, value_enum, default_value_t = Mode::Upsert)]
        mode: Mode,
        /// Create (or set) the imported contacts as marketing contacts.
        #[arg(long)]
        set_as_marketing: bool,
        /// Column holding a GDPR opt-in (true/false, yes/no, 1/0).
        #[arg(long)]
        opt_in_column: Option<String>,
        /// A key that makes a resent import return the first one.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Set the marketing status of a list's contacts (or named ones).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["list", "ids", "conditions"])))]
    SetStatus {
        #[arg(long, value_enum)]
        status: Status,
        /// A static or active list of the contacts service, by id or by name.
        #[arg(long, conflicts_with_all = ["ids", "conditions"])]
        list: Option<String>,
        /// Contact ids, comma separated.
        #[arg(long, value_delimiter = ',', conflicts_with = "conditions")]
        ids: Vec<String>,
        /// The contacts matching every condition: property=value, !=, >, >=, <, <=, or ~ for
        /// "contains" (repeat for more).
        #[arg(long = "where", value_parser = parse_condition)]
        conditions: Vec<cpb::Filter>,
    },
    /// The account's lists: id, type, size and name.
    Lists {
        /// Only the lists whose name contains this (without regard to case).
        #[arg(long)]
        name: Option<String>,
    },
    /// Create a list: static, or active (kept to a filter) with --where.
    CreateList {
        name: String,
        /// Conditions of an active list (see set-status --where).
        #[arg(long = "where", value_parser = parse_condition)]
        conditions: Vec<cpb::Filter>,
    },
    /// Turn on marketing contacts for the account (admin).
    EnableMarketing,
    /// Usage and tier, with a chart of the last days.
    Usage {
        /// Days to draw, today included.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3660))]
        days: u32,
    },
    /// The lifecycle funnel of a range of days, and contacts per stage at the end of each day.
    Lifecycle {
        /// The first day (YYYY-MM-DD).
        #[arg(long)]
        from: chrono::NaiveDate,
        /// The last day (YYYY-MM-DD); at most 366 days in all, counting both ends.
        #[arg(long)]
        to: chrono::NaiveDate,
        /// The zone the days are in, e.g. Europe/Zurich (default UTC).
        #[arg(long, default_value = "")]
        time_zone: String,
    },
    /// The newest alerts.
    Alerts {
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// Invoices, newest first.
    Invoices,
    /// Show the clock, or move a manual one forward (and wait for the work due).
    Clock {
        /// How far, e.g. "1day", "36h".
        #[arg(long, conflicts_with = "to", allow_hyphen_values = true, value_parser = forward)]
        advance: Option<humantime::Duration>,
        /// To an instant (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Print a token signed with the deployment's HS256 secret (CONTACTIER_JWT_SECRET, or the
    /// development secret in the data directory), for development and test setups.
    #[command(group(clap::ArgGroup::new("whose").required(true).args(["account", "service"])))]
    Token {
        /// The account a user token acts on.
        #[arg(long)]
        account: Option<String>,
        /// The user it names.
        #[arg(long, default_value = "ctl-user", conflicts_with = "service")]
        user: String,
        /// Scopes: read, write, admin, ops (comma separated).
        #[arg(long, value_delimiter = ',', default_value = "read", value_parser = ["read", "write", "admin", "ops"])]
        scopes: Vec<String>,
        /// A service token for this service instead of a user token.
        #[arg(long, conflicts_with = "account", value_parser = ["contacts", "marketing-status", "billing", "notification"])]
        service: Option<String>,
        /// How long it is valid, e.g. "1h", "30min" (at most 30 days).
        #[arg(long, default_value = "1h")]
        lifetime: humantime::Duration,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Create,
    Update,
    Upsert,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Status {
    Marketing,
    NonMarketing,
}

/// `property=value` and the other comparisons of `--where` as a filter condition.
fn parse_condition(s: &str) -> Result<cpb::Filter, String> {
    use cpb::FilterOperator as Op;
    // Longest operators first, so ">=" is not read as ">".
    for (text, op) in [
        ("!=", Op::Neq),
        (">=", Op::Gte),
        ("<=", Op::Lte),
        ("=", Op::Eq),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("~", Op::Contains),
    ] {
        if let Some((property, value)) = s.split_once(text) {
            let property = property.trim();
            if property.is_empty() {
                break;
            }
            return Ok(cpb::Filter {
                property: property.to_owned(),
                operator: op as i32,
                value: value.trim().to_owned(),
                ..Default::default()
            });
        }
    }
    Err(format!("{s:?}: expected property=value (or !=, >, >=, <, <=, ~ for contains)"))
}

/// The --map pairs as the import's column mapping; a column mapped twice is refused (the last
/// would silently win).
fn mapping(pairs: Vec<(String, String)>) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut map = std::collections::BTreeMap::new();
    for (column, property) in pairs {
        if let Some(first) = map.insert(column.clone(), property.clone()) {
            anyhow::bail!("--map: column {column:?} is mapped twice (to {first} and to {property})");
        }
    }
    Ok(map)
}

fn parse_mapping(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((c, p)) if !c.is_empty() && !p.is_empty() => Ok((c.to_owned(), p.to_owned())),
        _ => Err(format!("{s:?}: expected COLUMN=property")),
    }
}

/// Where the services are and how to sign requests.
pub struct Target {
    pub host: IpAddr,
    pub base_port: u16,
    pub runtime: RuntimeArgs,
}

fn token(ctl: &Ctl, target: &Target) -> anyhow::Result<String> {
    if let Some(t) = &ctl.token {
        return Ok(t.clone());
    }
    let scopes = ["read", "write", "admin", "ops"];
    Ok(signer(target)?.user_token("dev-account", "dev-user", &scopes, chrono::Duration::hours(1)))
}

/// An error as one plain line: what the service said and what to check.
pub fn explain(e: &anyhow::Error, target: &Target) -> String {
    use tonic::Code;
    let ports = format!("{}:{}-{}", target.host, target.base_port, target.base_port + 3);
    let Some(s) = e.downcast_ref::<tonic::Status>() else {
        return format!("{e:#}");
    };
    let message = s.message().lines().next().unwrap_or("");
    let unreachable = ["connect", "transport", "connection"].iter().any(|w| message.contains(w));
    let hint = match s.code() {
        Code::Unavailable | Code::Unknown if unreachable => {
            return format!(
                "cannot reach the services at {ports} ({message}); is contactier running there? check --host and --base-port"
            );
        }
        Code::Unauthenticated => {
            "check the token (--token or CONTACTIER_TOKEN): it may have expired or be signed with another secret"
        }
        Code::PermissionDenied => {
            "the token lacks the scope this needs (read, write, admin or ops); `contactier ctl token --account ... --scopes ...` mints one"
        }
        Code::Unimplemented => "the service at that port is not the one expected; check --base-port",
        Code::NotFound if message.starts_with("subscription") => {
            "the account has no subscription yet (BillingService/CreateSubscription makes one)"
        }
        Code::ResourceExhausted => "the account's rate limit; wait and retry",
        Code::FailedPrecondition
            if tonic_types::StatusExt::get_details_error_info(s)
                .is_some_and(|i| i.reason == "FEATURE_DISABLED") =>
        {
            "`contactier ctl enable-marketing` turns marketing contacts on (admin)"
        }
        Code::Unavailable => "the service is unavailable for now; retry",
        _ => "",
    };
    let code = format!("{:?}", s.code());
    if hint.is_empty() { format!("{message} ({code})") } else { format!("{message} ({code}); {hint}") }
}

/// The authenticator of the deployment's HS256 secret.
fn signer(target: &Target) -> anyhow::Result<contactier_runtime::auth::Authenticator> {
    let path = target.runtime.data_dir.join("dev-jwt-secret");
    let secret = match &target.runtime.jwt_secret {
        Some(s) => {
            if let Some(why) = contactier_runtime::host::weak_secret(s) {
                anyhow::bail!("CONTACTIER_JWT_SECRET {why}; tokens signed with it would not be safe");
            }
            s.clone()
        }
        None => std::fs::read_to_string(&path)
            .with_context(|| format!("no --token and no development secret at {}", path.display()))?
            .trim()
            .to_owned(),
    };
    Ok(Platform::new(&target.runtime, Some(&secret))?.authenticator)
}

/// `ctl token`: prints a token and nothing else, so it can be captured by a shell.
fn print_token(
    target: &Target,
    account: Option<String>,
    user: &str,
    scopes: &[String],
    service: Option<String>,
    lifetime: std::time::Duration,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        lifetime >= std::time::Duration::from_secs(1)
            && lifetime <= std::time::Duration::from_secs(30 * 86_400),
        "--lifetime must be between 1s and 30days"
    );
    let ttl = chrono::Duration::from_std(lifetime)?;
    for (flag, v) in [("--account", account.as_deref().unwrap_or("x")), ("--user", user)] {
        anyhow::ensure!(
            !v.is_empty() && v.chars().count() <= 256 && !v.chars().any(char::is_control),
            "{flag} must be 1 to 256 characters without control characters"
        );
    }
    let signer = signer(target)?;
    let token = match (service, account) {
        (Some(service), _) => signer.service_token(&service, ttl),
        (None, Some(account)) => {
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            signer.user_token(&account, user, &scopes, ttl)
        }
        (None, None) => anyhow::bail!("--account or --service is required"),
    };
    println!("{token}");
    Ok(())
}

pub async fn run(ctl: Ctl, target: &Target) -> anyhow::Result<()> {
    if let Command::Token { account, user, scopes, service, lifetime } = ctl.command {
        return print_token(target, account, &user, &scopes, service, lifetime.into());
    }
    let token = token(&ctl, target)?;
    let conn = Client::builder(Endpoints::local(&target.host.to_string(), target.base_port))
        .token(StaticToken(token))
        .build()?;
    match ctl.command {
        Command::Import { file, mappings, mode, set_as_marketing, opt_in_column, request_id } => {
            let header = cpb::ImportHeader {
                name: file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                mode: match mode {
                    Mode::Create => cpb::ImportMode::Create,
                    Mode::Update => cpb::ImportMode::Update,
                    Mode::Upsert => cpb::ImportMode::Upsert,
                } as i32,
                column_mapping: mapping(mappings)?,
                set_as_marketing,
                gdpr_opt_in_column: opt_in_column.unwrap_or_default(),
                request_id,
                ..Default::default()
            };
            import(&conn, file, header).await
        }
        Command::SetStatus { status, list, ids, conditions } => {
            let ids: Vec<String> =
                ids.into_iter().map(|i| i.trim().to_owned()).filter(|i| !i.is_empty()).collect();
            if list.is_none() && conditions.is_empty() && ids.is_empty() {
                anyhow::bail!("--ids names no contact id");
            }
            let target = match list {
                Some(l) => mpb::set_marketing_status_request::Target::ListId(list_id(&conn, &l).await?),
                None if !conditions.is_empty() => {
                    mpb::set_marketing_status_request::Target::Filter(filter(conditions))
                }
                None => mpb::set_marketing_status_request::Target::Contacts(mpb::ContactIds { ids }),
            };
            let status = match status {
                Status::Marketing => MarketingStatus::Marketing,
                Status::NonMarketing => MarketingStatus::NonMarketing,
            };
            // A key of its own, so the call may be sent again after a lost answer.
            let req = mpb::SetMarketingStatusRequest {
                request_id: uuid::Uuid::now_v7().to_string(),
                target: Some(target),
                status: status as i32,
                source: None,
            };
            let r = conn.marketing_status().set_marketing_status(req).await?.into_inner();
            let c = r.count.unwrap_or_default();
            println!("changed {}, unchanged {}, not found {}", r.changed, r.unchanged, r.not_found);
            println!(
                "marketing contacts now {} ({} pending non-marketing)",
                chart::group(c.marketing),
                c.pending_non_marketing
            );
            Ok(())
        }
        Command::Usage { days } => usage(&conn, days).await,
        Command::Lifecycle { from, to, time_zone } => lifecycle(&conn, from, to, time_zone).await,
        Command::Alerts { limit } => {
            let req = npb::ListAlertsRequest { page_size: limit, page_token: String::new() };
            let r = conn.notification().list_alerts(req).await?.into_inner();
            if r.alerts.is_empty() {
                println!("no alerts");
            }
            for a in r.alerts {
                let when = a.created_at.map(|t| ts(&t)).unwrap_or_default();
                println!(
                    "{when}  {:<20} {}",
                    a.kind().as_str_name().trim_start_matches("ALERT_KIND_"),
                    a.message
                );
            }
            Ok(())
        }
        Command::Invoices => {
            let req = bpb::ListInvoicesRequest { page_size: 100, page_token: String::new() };
            let r = conn.billing().list_invoices(req).await?.into_inner();
            if r.invoices.is_empty() {
                println!("no invoices");
            }
            for i in r.invoices {
                let total = i.total.clone().unwrap_or_default();
                println!(
                    "#{:<4} {:<8} {:>12} {}  {}  issued {}",
                    i.number,
                    i.kind().as_str_name().trim_start_matches("INVOICE_KIND_").to_lowercase(),
                    money(&total),
                    date(i.term_start.as_ref()),
                    date(i.term_end.as_ref()),
                    i.issued_at.map(|t| ts(&t)).unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Clock { advance, to } => {
            let mut clock = conn.clock();
            let now = if let Some(by) = advance {
                let by: std::time::Duration = by.into();
                let d =
                    prost_types::Duration { seconds: by.as_secs() as i64, nanos: by.subsec_nanos() as i32 };
                let r = clock.advance_time(opb::AdvanceTimeRequest { by: Some(d) }).await.map_err(manual)?;
                let r = r.into_inner();
                println!("advanced in {} steps", r.steps);
                r.now
            } else if let Some(t) = to {
                let time = prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 };
                clock
                    .set_time(opb::SetTimeRequest { time: Some(time) })
                    .await
                    .map_err(manual)?
                    .into_inner()
                    .now
            } else {
                let r = clock.get_time(opb::GetTimeRequest {}).await.map_err(manual)?.into_inner();
                println!("clock: {}", if r.manual { "manual" } else { "system" });
                r.now
            };
            println!("now {}", now.map(|t| ts(&t)).unwrap_or_default());
            Ok(())
        }
        Command::Lists { name } => {
            let wanted = name.map(|n| n.to_lowercase());
            let lists = all_lists(&conn).await?;
            let shown: Vec<_> = lists
                .iter()
                .filter(|l| wanted.as_ref().is_none_or(|w| l.name.to_lowercase().contains(w)))
                .collect();
            if shown.is_empty() {
                println!("no lists");
            }
            for l in shown {
                let kind = l.r#type().as_str_name().trim_start_matches("LIST_TYPE_").to_lowercase();
                println!("{}  {kind:<6} {:>9}  {}", l.id, chart::group(l.size), l.name);
            }
            Ok(())
        }
        Command::CreateList { name, conditions } => {
            let (kind, f) = if conditions.is_empty() {
                (cpb::ListType::Static, None)
            } else {
                (cpb::ListType::Active, Some(filter(conditions)))
            };
            let req = cpb::CreateListRequest { name, r#type: kind as i32, filter: f };
            let l = conn
                .contacts()
                .create_list(req)
                .await?
                .into_inner()
                .list
                .context("the service answered no list")?;
            println!("{}  {} contacts", l.id, chart::group(l.size));
            Ok(())
        }
        Command::EnableMarketing => {
            conn.marketing_status().enable_marketing_contacts(mpb::EnableMarketingContactsRequest {}).await?;
            println!("marketing contacts are on for this account");
            Ok(())
        }
        // Needs no connection; answered before connecting.
        Command::Token { .. } => Ok(()),
    }
}

/// A clock that cannot be moved is the system clock, not a wrong port.
fn manual(e: tonic::Status) -> anyhow::Error {
    if e.code() == tonic::Code::Unimplemented {
        anyhow::anyhow!(
            "the services run on the system clock; only a clock started with --manual-clock can be moved"
        )
    } else {
        e.into()
    }
}

/// Every list of the account, page by page.
async fn all_lists(conn: &Client) -> anyhow::Result<Vec<cpb::ContactList>> {
    let (mut contacts, mut lists, mut token) = (conn.contacts(), Vec::new(), String::new());
    loop {
        let r = contacts.list_lists(cpb::ListListsRequest { page_size: 1_000, page_token: token }).await?;
        let r = r.into_inner();
        lists.extend(r.lists);
        if r.next_page_token.is_empty() {
            return Ok(lists);
        }
        token = r.next_page_token;
    }
}

/// The id of the list `given` names: a list's id, or else the one list with that name.
async fn list_id(conn: &Client, given: &str) -> anyhow::Result<String> {
    let lists = all_lists(conn).await?;
    if lists.iter().any(|l| l.id == given) {
        return Ok(given.to_owned());
    }
    let key = contactier_contacts::names::list_name_key(given);
    let named: Vec<_> =
        lists.iter().filter(|l| contactier_contacts::names::list_name_key(&l.name) == key).collect();
    match named.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => anyhow::bail!("no list has the id or name {given:?}; `contactier ctl lists` shows them"),
        more => anyhow::bail!(
            "{} lists are named {given:?}; give one of their ids: {}",
            more.len(),
            more.iter().map(|l| l.id.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn ts(t: &prost_types::Timestamp) -> String {
    chrono::DateTime::from_timestamp(t.seconds, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn date(d: Option<&common::Date>) -> String {
    d.map(|d| format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)).unwrap_or_default()
}

fn money(m: &common::Money) -> String {
    format!("{}.{:02} {}", chart::group(m.amount_minor / 100), (m.amount_minor % 100).abs(), m.currency)
}

/// Conditions that must all hold, as a filter of one group.
fn filter(conditions: Vec<cpb::Filter>) -> cpb::ContactFilter {
    cpb::ContactFilter { groups: vec![cpb::FilterGroup { filters: conditions }] }
}

/// The first `n` row errors an import summary prints; the rest are counted.
const SHOWN_ERRORS: usize = 20;

/// The columns of a CSV file's header line.
fn header_columns(head: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(head);
    Ok(reader
        .headers()
        .context("reading the file's header line")?
        .iter()
        .map(|c| c.trim().to_owned())
        .collect())
}

/// Mapped columns the header does not have, so a wrong mapping is refused before any upload.
fn missing_columns<'a>(mapping: impl Iterator<Item = &'a String>, columns: &[String]) -> Vec<String> {
    mapping.filter(|c| !columns.iter().any(|h| h == *c)).cloned().collect()
}

/// The lines of a file (a last line without a line break counts).
async fn count_lines(file: &std::path::Path) -> anyhow::Result<i64> {
    let mut f = tokio::fs::File::open(file).await?;
    let (mut buf, mut lines, mut last) = (vec![0u8; 1 << 16], 0i64, b'\n');
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(lines + i64::from(last != b'\n'));
        }
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as i64;
        last = buf[n - 1];
    }
}

/// Streams the file in chunks and follows the rows the server has read; ends with every count
/// and the first row errors, and fails when rows failed.
async fn import(conn: &Client, file: PathBuf, header: cpb::ImportHeader) -> anyhow::Result<()> {
    let mut f = tokio::fs::File::open(&file).await.with_context(|| format!("opening {}", file.display()))?;
    // A regular file's size is taken before the upload and sent in the end part, so one that
    // shrinks or grows while it is sent is refused rather than imported in part; its lines
    // after the header are the rows, unless quoted values hold line breaks ("about"). A pipe
    // can be read only once: it goes as it comes, its rows not counted ahead.
    let meta = f.metadata().await?;
    let (known_size, lines) = if meta.is_file() {
        (Some(meta.len() as i64), count_lines(&file).await?.saturating_sub(1))
    } else {
        (None, 0)
    };
    let mut head = vec![0u8; 64 * 1024];
    let n = f.read(&mut head).await?;
    head.truncate(n);
    let columns = header_columns(&head)?;
    if columns.iter().all(String::is_empty) {
        anyhow::bail!("{} is empty: an import needs a header line naming its columns", file.display());
    }
    let mut wanted: Vec<&String> = header.column_mapping.keys().collect();
    if !header.gdpr_opt_in_column.is_empty() {
        wanted.push(&header.gdpr_opt_in_column);
    }
    let missing = missing_columns(wanted.into_iter(), &columns);
    if !missing.is_empty() {
        anyhow::bail!(
            "{} has no column {}; its columns are {}",
            file.display(),
            missing.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", "),
            columns.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")
        );
    }
    let bar = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("a valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let first = futures::stream::iter([cpb::ImportContactsRequest { part: Some(Part::Header(header)) }]);
    // The end part goes only after the whole file: a file that cannot be read to its end
    // leaves the import cut off, to be taken up by running the command again.
    let shown = file.display().to_string();
    let chunks = futures::stream::unfold(Some((f, Some(head), 0i64)), move |state| {
        let shown = shown.clone();
        async move {
            let (mut f, head, size) = state?;
            let part = |p| cpb::ImportContactsRequest { part: Some(p) };
            if let Some(head) = head.filter(|h| !h.is_empty()) {
                let size = size + head.len() as i64;
                return Some((part(Part::Chunk(head)), Some((f, None, size))));
            }
            let mut buf = vec![0u8; 64 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => Some((part(Part::End(cpb::ImportEnd { size: known_size.unwrap_or(size) })), None)),
                Ok(n) => {
                    buf.truncate(n);
                    Some((part(Part::Chunk(buf)), Some((f, None, size + n as i64))))
                }
                Err(e) => {
                    eprintln!("reading {shown} failed: {e}");
                    None
                }
            }
        }
    });
    let started = std::time::Instant::now();
    let mut progress = conn.contacts().import_contacts(first.chain(chunks)).await?.into_inner();
    let mut last = None;
    while let Some(m) = progress.next().await {
        let m = m?;
        if let Some(p) = &m.progress {
            // The bytes sent run ahead of the rows read (the transport buffers), so the total
            // comes from the file's lines, counted before the upload.
            let expected = lines;
            let rate = p.rows_read as f64 / started.elapsed().as_secs_f64().max(0.001);
            let left = if rate > 0.0 { (expected - p.rows_read).max(0) as f64 / rate } else { 0.0 };
            bar.set_message(format!(
                "{} of about {} rows, {} rows/s, about {} s left; {} created, {} updated, {} failed",
                chart::group(p.rows_read),
                chart::group(expected.max(p.rows_read)),
                chart::group(rate as i64),
                left.round() as i64,
                chart::group(p.created),
                chart::group(p.updated),
                chart::group(p.failed)
            ));
        }
        last = m.progress;
    }
    bar.finish_and_clear();
    let p = last.context("the import ended without a summary")?;
    println!(
        "import {}: {} rows read, {} created, {} updated, {} skipped, {} failed",
        p.import_id,
        chart::group(p.rows_read),
        chart::group(p.created),
        chart::group(p.updated),
        chart::group(p.skipped),
        chart::group(p.failed)
    );
    let problems = (p.failed + p.skipped) as usize;
    if problems > 0 {
        let req = cpb::ListImportErrorsRequest {
            import_id: p.import_id.clone(),
            page_size: SHOWN_ERRORS as i32,
            page_token: String::new(),
        };
        let errors = conn.contacts().list_import_errors(req).await?.into_inner();
        for e in &errors.errors {
            println!("  row {:>7}  {:<16} {}", e.row, e.column, e.reason);
        }
        if problems > errors.errors.len() {
            println!(
                "  ... and {} more (ListImportErrors with import id {})",
                chart::group((problems - errors.errors.len()) as i64),
                p.import_id
            );
        }
    }
    if p.failed > 0 {
        anyhow::bail!("{} of {} rows failed", chart::group(p.failed), chart::group(p.rows_read));
    }
    Ok(())
}

async fn lifecycle(
    conn: &Client,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
    time_zone: String,
) -> anyhow::Result<()> {
    use chrono::Datelike;
    let pb_date =
        |d: chrono::NaiveDate| common::Date { year: d.year(), month: d.month() as i32, day: d.day() as i32 };
    let req = cpb::GetLifecycleReportRequest {
        start_date: Some(pb_date(from)),
        end_date: Some(pb_date(to)),
        time_zone,
    };
    let r = conn.contacts().get_lifecycle_report(req).await?.into_inner();
    let stage = |s: &str| if s.is_empty() { "(none)".to_owned() } else { s.to_owned() };
    let now: Vec<String> =
        r.current.iter().map(|c| format!("{} {}", stage(&c.stage), chart::group(c.contacts))).collect();
    println!("contacts per stage now: {}", if now.is_empty() { "none".to_owned() } else { now.join(", ") });
    println!("funnel {from} to {to}");
    let steps: Vec<chart::Step> = r
        .conversions
        .iter()
        .map(|c| chart::Step {
            from: c.from_stage.clone(),
            to: c.to_stage.clone(),
            entered: c.entered,
            converted: c.converted,
            rate: c.rate_basis_points,
        })
        .collect();
    for line in chart::funnel(&steps, 30) {
        println!("  {line}");
    }
    println!("contacts per stage at the end of each day");
    let days: Vec<(String, Vec<(String, i64)>)> = r
        .daily
        .iter()
        .map(|d| (date(d.date.as_ref()), d.stages.iter().map(|c| (c.stage.clone(), c.contacts)).collect()))
        .collect();
    let order =
        ["subscriber", "lead", "marketing_qualified_lead", "sales_qualified_lead", "opportunity", "customer"];
    for line in chart::stage_table(&days, &order) {
        println!("  {line}");
    }
    println!("new contacts per day, by source");
    for d in &r.new_contacts {
        let by: Vec<String> =
            d.sources.iter().map(|c| format!("{} {}", c.source, chart::group(c.contacts))).collect();
        println!(
            "  {}  {}",
            date(d.date.as_ref()),
            if by.is_empty() { "-".to_owned() } else { by.join(", ") }
        );
    }
    Ok(())
}

async fn usage(conn: &Client, days: u32) -> anyhow::Result<()> {
    let mut billing = conn.billing();
    let u = billing.get_usage(bpb::GetUsageRequest {}).await?.into_inner().usage.unwrap_or_default();
    println!(
        "marketing contacts {} of {} ({}.{:02} %), {} contacts in all",
        chart::group(u.marketing_count),
        chart::group(u.tier),
        u.used_basis_points / 100,
        u.used_basis_points % 100,
        chart::group(u.total_contacts)
    );
    println!(
        "next update date {}, renewal {}",
        date(u.next_update_date.as_ref()),
        date(u.renewal_date.as_ref())
    );
    // The services' today: the clock's with the ops scope; else the last day the history has
    // (it ends on the account's today), found in a range around this machine's date.
    let clock = conn.clock().get_time(opb::GetTimeRequest {}).await;
    let told = clock
        .ok()
        .and_then(|r| r.into_inner().now)
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.date_naive());
    let here = chrono::Utc::now().date_naive();
    let (ask_from, ask_to) = match told {
        Some(t) => (t - chrono::Days::new(u64::from(days - 1)), t),
        None => (here - chrono::Days::new(u64::from(days) + 366), here + chrono::Days::new(366)),
    };
    let pb_date = |d: chrono::NaiveDate| {
        use chrono::Datelike;
        Some(common::Date { year: d.year(), month: d.month() as i32, day: d.day() as i32 })
    };
    let req = bpb::GetUsageHistoryRequest { start_date: pb_date(ask_from), end_date: pb_date(ask_to) };
    let points = billing.get_usage_history(req).await?.into_inner().points;
    let last_known = points
        .last()
        .and_then(|p| p.date.as_ref())
        .and_then(|d| chrono::NaiveDate::from_ymd_opt(d.year, d.month as u32, d.day as u32));
    let today = told.or(last_known).unwrap_or(here);
    let from = today - chrono::Days::new(u64::from(days - 1));
    let known: Vec<chart::Day> = points
        .iter()
        .map(|p| chart::Day { date: date(p.date.as_ref()), count: p.max_marketing_count, tier: p.tier })
        .collect();
    let rows = chart::every_day(from, today, known);
    for line in chart::render(&rows, 40) {
        println!("{line}");
    }
    Ok(())
}

/// A duration to move the clock by: forward only ("-1day" is refused in words, not as an
/// unknown flag).
fn forward(s: &str) -> Result<humantime::Duration, String> {
    if s.trim_start().starts_with('-') {
        return Err("the clock only moves forward".into());
    }
    s.parse::<humantime::Duration>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpb::FilterOperator as Op;

    #[test]
    fn conditions_read_as_people_write_them() {
        let c = |s: &str| parse_condition(s).map(|f| (f.property.clone(), f.operator(), f.value));
        assert_eq!(c("lifecycle_stage=customer"), Ok(("lifecycle_stage".into(), Op::Eq, "customer".into())));
        assert_eq!(c("score >= 10"), Ok(("score".into(), Op::Gte, "10".into())));
        assert_eq!(c("score!=3"), Ok(("score".into(), Op::Neq, "3".into())));
        assert_eq!(c("email~example.com"), Ok(("email".into(), Op::Contains, "example.com".into())));
        assert!(c("=x").is_err());
        assert!(c("nothing").unwrap_err().contains("property=value"));
    }

    #[tokio::test]
    async fn the_rows_expected_are_counted_from_the_lines_not_the_bytes_sent() {
        let dir = tempfile::tempdir().unwrap();
        let with_break = dir.path().join("a.csv");
        std::fs::write(&with_break, "E-mail\n".to_owned() + &"x@example.com\n".repeat(70_000)).unwrap();
        assert_eq!(count_lines(&with_break).await.unwrap(), 70_001);
        let without = dir.path().join("b.csv");
        std::fs::write(&without, "E-mail\na@example.com\nb@example.com").unwrap();
        assert_eq!(count_lines(&without).await.unwrap(), 3);
        let empty = dir.path().join("c.csv");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(count_lines(&empty).await.unwrap(), 0);
    }

    #[test]
    fn the_clock_is_moved_forward_only_and_a_step_back_is_refused_in_words() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            ctl: Ctl,
        }
        let parse = |by: &str| <Cli as clap::Parser>::try_parse_from(["ctl", "clock", "--advance", by]);
        let back = parse("-1day").err().expect("refused").to_string();
        assert!(back.contains("the clock only moves forward"), "{back}");
        let Command::Clock { advance, .. } = parse("36h").expect("parsed").ctl.command else {
            panic!("the clock command")
        };
        assert_eq!(advance.map(std::time::Duration::from), Some(std::time::Duration::from_secs(36 * 3600)));
    }

    #[test]
    fn a_clock_that_cannot_move_is_the_system_clock_not_a_wrong_port() {
        let e = manual(tonic::Status::unimplemented(
            "contactier.ops.v1.ClockService/AdvanceTime is not served here",
        ));
        assert!(e.to_string().contains("--manual-clock"), "{e}");
        let other = manual(tonic::Status::permission_denied("requires ops access"));
        assert!(
            other.downcast_ref::<tonic::Status>().is_some(),
            "other refusals keep their status for explain()"
        );
    }

    #[test]
    fn a_column_mapped_twice_is_refused() {
        let pair = |c: &str, p: &str| (c.to_owned(), p.to_owned());
        let e = mapping(vec![pair("E-mail", "email"), pair("E-mail", "first_name")]).unwrap_err();
        assert!(e.to_string().contains("mapped twice"), "{e}");
        assert_eq!(mapping(vec![pair("E-mail", "email"), pair("First", "first_name")]).unwrap().len(), 2);
    }
}
