//! `contactier ctl` as a person uses it, run as a process against a running all-in-one: flags
//! after the subcommand, one plain error line with what to check and a failing exit status, a
//! wrong column mapping refused before the upload, an import summary with every count and the
//! errors past the first ones counted, a day per row of usage, and `ctl token`.

mod common;
use common::free_base;
use contactier_proto::billing::v1::{
    CreateSubscriptionRequest, billing_service_client::BillingServiceClient,
};
use contactier_proto::common::v1::{Date, Edition, Term};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

struct Running {
    child: Child,
    dir: tempfile::TempDir,
    base: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let mut child = Command::new(env!("CARGO_BIN_EXE_contactier"))
        .args(["--base-port", &base.to_string(), "--manual-clock", "--clock-start", "2026-04-20T16:00:00Z"])
        .env("CONTACTIER_DATA_DIR", dir.path())
        .env_remove("CONTACTIER_JWT_SECRET")
        .env_remove("DATABASE_URL")
        .env_remove("CONTACTIER_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("TOKEN=") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Running { child, dir, base }
}

/// Runs `contactier` with `args`, the data directory given after them all.
fn ctl(r: &Running, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_contactier"))
        .args(args)
        .args(["--data-dir", r.dir.path().to_str().unwrap()])
        .env_remove("CONTACTIER_TOKEN")
        .env_remove("CONTACTIER_BASE_PORT")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn ctl_answers_a_person_plainly() {
    let r = start();
    let base = r.base.to_string();

    // A token for the account, flags after the subcommand.
    let out = ctl(
        &r,
        &["ctl", "token", "--account", "acct-ctl", "--scopes", "read,write,admin", "--lifetime", "1h"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let admin = text(&out.stdout).trim().to_owned();
    assert_eq!(admin.split('.').count(), 3, "one JWT on one line: {admin:?}");
    let out = ctl(&r, &["ctl", "token", "--account", "acct-ctl", "--scopes", "read"]);
    let reader = text(&out.stdout).trim().to_owned();

    let mut billing =
        BillingServiceClient::connect(format!("http://127.0.0.1:{}", r.base + 2)).await.unwrap();
    let mut req = tonic::Request::new(CreateSubscriptionRequest {
        edition: Edition::Professional as i32,
        term: Term::Monthly as i32,
        start_date: Some(Date { year: 2026, month: 4, day: 15 }),
        currency: "EUR".into(),
        subsidiary: "NA".into(),
        tier: 0,
        marketing_contacts_enabled: true,
    });
    req.metadata_mut().insert("authorization", format!("Bearer {admin}").parse().unwrap());
    billing.create_subscription(req).await.unwrap();

    // Usage draws a row for every day asked for, ending on the services' today.
    let out = ctl(&r, &["ctl", "usage", "--days", "10", "--base-port", &base, "--token", &admin]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let days: Vec<String> =
        text(&out.stdout).lines().filter(|l| l.starts_with("2026-04-")).map(str::to_owned).collect();
    assert_eq!(days.len(), 10, "{}", text(&out.stdout));
    assert!(days[0].starts_with("2026-04-11"), "{days:#?}");
    assert!(days[9].starts_with("2026-04-20") && days[9].contains("% of"), "{days:#?}");
    let out = ctl(&r, &["ctl", "usage", "--days", "100000", "--base-port", &base, "--token", &admin]);
    assert_eq!(out.status.code(), Some(2), "refused by the command line: {}", text(&out.stderr));

    // The lifecycle funnel and the stages day by day.
    let mut contacts =
        contactier_proto::contacts::v1::contacts_service_client::ContactsServiceClient::connect(format!(
            "http://127.0.0.1:{}",
            r.base
        ))
        .await
        .unwrap();
    for email in ["lead-1@example.org", "lead-2@example.org"] {
        let input = contactier_proto::contacts::v1::ContactInput {
            email: email.into(),
            properties: [("lifecycle_stage".to_owned(), "lead".to_owned())].into(),
            ..Default::default()
        };
        let mut req = tonic::Request::new(contactier_proto::contacts::v1::CreateContactRequest {
            contact: Some(input),
            request_id: String::new(),
        });
        req.metadata_mut().insert("authorization", format!("Bearer {admin}").parse().unwrap());
        contacts.create_contact(req).await.unwrap();
    }
    let args = [
        "ctl",
        "lifecycle",
        "--from",
        "2026-04-19",
        "--to",
        "2026-04-20",
        "--base-port",
        &base,
        "--token",
        &reader,
    ];
    let out = ctl(&r, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("contacts per stage now: lead 2"), "{shown}");
    assert!(
        shown.contains("lead                     -> marketing_qualified_lead       2 in,       0 on   0.0 %"),
        "{shown}"
    );
    let rows: Vec<&str> = shown.lines().map(str::trim).filter(|l| l.starts_with("2026-04-")).collect();
    assert_eq!(rows.len(), 4, "a row per day in the table and in the new contacts: {shown}");
    assert!(rows[1].starts_with("2026-04-20") && rows[1].ends_with('2'), "{shown}");
    assert!(rows[3].contains("USER 2"), "{shown}");
    let bad = [
        "ctl",
        "lifecycle",
        "--from",
        "2026-04-19",
        "--to",
        "2026-04-20",
        "--time-zone",
        "Mars/Base",
        "--base-port",
        &base,
        "--token",
        &reader,
    ];
    let out = ctl(&r, &bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("time_zone"), "{}", text(&out.stderr));

    // Empty answers say so; the clock answers an ops token.
    let out = ctl(&r, &["ctl", "invoices", "--base-port", &base, "--token", &admin]);
    assert_eq!(text(&out.stdout).trim(), "no invoices", "{}", text(&out.stderr));
    let ops = ctl(&r, &["ctl", "token", "--account", "acct-ctl", "--scopes", "ops"]);
    let ops = text(&ops.stdout).trim().to_owned();
    let out = ctl(&r, &["ctl", "clock", "--base-port", &base, "--token", &ops]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A user is up to 256 characters, as the services take it, whatever their bytes.
    let (longest, longer) = ("\u{1F600}".repeat(256), "\u{1F600}".repeat(257));
    let out = ctl(&r, &["ctl", "token", "--account", "acct-ctl", "--user", &longest]);
    assert!(out.status.success(), "256 four-byte characters: {}", text(&out.stderr));

    // Tokens are not minted for what cannot be: an unknown service, a control character, a
    // placeholder secret, a user past 256 characters.
    for args in [
        &["ctl", "token", "--account", "acct-ctl", "--user", &longer][..],
        &["ctl", "token", "--service", "nope"],
        &["ctl", "token", "--account", "a\tb"],
        &["ctl", "token", "--account", "a", "--jwt-secret", "change-me-change-me-change-me-change-me"],
    ] {
        let out = ctl(&r, args);
        assert!(!out.status.success(), "{args:?} minted {}", text(&out.stdout));
        assert!(text(&out.stdout).is_empty(), "{args:?}");
    }

    // Nothing listening: one line saying where it looked and what to check.
    let out = ctl(&r, &["ctl", "alerts", "--base-port", "1", "--token", &admin]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot reach the services at 127.0.0.1:1-4"), "{err}");
    assert!(err.contains("--base-port"), "{err}");

    // Too little scope: the service's refusal and the hint.
    let out = ctl(
        &r,
        &[
            "ctl",
            "set-status",
            "--ids",
            "c1",
            "--status",
            "marketing",
            "--base-port",
            &base,
            "--token",
            &reader,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("PermissionDenied") && err.contains("scope"), "{err}");

    // A mapping naming a column the file does not have is refused before anything is sent.
    let csv = r.dir.path().join("people.csv");
    let mut rows = String::from("E-mail,First\n");
    for i in 0..5 {
        rows.push_str(&format!("person{i}@example.com,P{i}\n"));
    }
    for i in 0..25 {
        rows.push_str(&format!("not-an-email-{i},Q{i}\n"));
    }
    std::fs::write(&csv, rows).unwrap();
    let file = csv.to_str().unwrap();
    let out =
        ctl(&r, &["ctl", "import", file, "--map", "Email=email", "--base-port", &base, "--token", &admin]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no column \"Email\"") && err.contains("\"E-mail\""), "{err}");
    assert!(!text(&out.stdout).contains("import "), "nothing was imported");

    // An import with failing rows: every count, the first errors and how many more, exit 1.
    let out = ctl(
        &r,
        &[
            "ctl",
            "import",
            file,
            "--map",
            "E-mail=email",
            "--map",
            "First=first_name",
            "--base-port",
            &base,
            "--token",
            &admin,
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("30 rows read, 5 created, 0 updated, 0 skipped, 25 failed"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.trim_start().starts_with("row ")).count(), 20, "{stdout}");
    assert!(stdout.contains("... and 5 more"), "{stdout}");
    assert!(stderr.contains("25 of 30 rows failed"), "{stderr}");

    // A pipe is read once, as it comes: every row of it imported.
    let fifo = r.dir.path().join("piped.csv");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut rows = String::from("E-mail\n");
            for i in 0..3 {
                rows.push_str(&format!("piped{i}@example.org\n"));
            }
            std::fs::write(fifo, rows).unwrap();
        })
    };
    let piped = fifo.to_str().unwrap();
    let out =
        ctl(&r, &["ctl", "import", piped, "--map", "E-mail=email", "--base-port", &base, "--token", &admin]);
    writer.join().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("3 rows read, 3 created"), "{stdout}");

    // Lists and filters from the command line, and the feature switch.
    let out = ctl(&r, &["ctl", "enable-marketing", "--base-port", &base, "--token", &admin]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ctl(
        &r,
        &[
            "ctl",
            "create-list",
            "Imported",
            "--where",
            "email~example.com",
            "--base-port",
            &base,
            "--token",
            &admin,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).trim_end().ends_with("5 contacts"), "{}", text(&out.stdout));
    let out = ctl(&r, &["ctl", "lists", "--base-port", &base, "--token", &reader]);
    assert!(
        text(&out.stdout).lines().any(|l| l.contains("active") && l.ends_with("Imported")),
        "{}",
        text(&out.stdout)
    );
    let out = ctl(
        &r,
        &[
            "ctl",
            "set-status",
            "--status",
            "marketing",
            "--where",
            "email~person",
            "--where",
            "first_name=P1",
            "--base-port",
            &base,
            "--token",
            &admin,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("changed 1,"), "{}", text(&out.stdout));

    // A list is found by its name too; `lists --name` narrows the listing.
    let out = ctl(
        &r,
        &[
            "ctl",
            "set-status",
            "--list",
            "imported",
            "--status",
            "marketing",
            "--base-port",
            &base,
            "--token",
            &admin,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("changed "), "{}", text(&out.stdout));
    let out = ctl(
        &r,
        &[
            "ctl",
            "set-status",
            "--list",
            "Nope",
            "--status",
            "marketing",
            "--base-port",
            &base,
            "--token",
            &admin,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no list has the id or name \"Nope\""), "{}", text(&out.stderr));
    let out = ctl(&r, &["ctl", "lists", "--name", "port", "--base-port", &base, "--token", &reader]);
    assert_eq!(text(&out.stdout).lines().count(), 1, "{}", text(&out.stdout));
    let out = ctl(&r, &["ctl", "lists", "--name", "zzz", "--base-port", &base, "--token", &reader]);
    assert_eq!(text(&out.stdout).trim(), "no lists");
    let out = ctl(
        &r,
        &["ctl", "set-status", "--ids", "", "--status", "marketing", "--base-port", &base, "--token", &admin],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--ids"), "{}", text(&out.stderr));
}
