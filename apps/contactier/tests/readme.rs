//! The README's walk-through, run as written: the grpcurl lines of "Calling it" and then the
//! `contactier ctl` lines of "The command line", against the all-in-one started as the README
//! says (on free ports: the README's 5005x ports are moved to them, nothing else is changed).
//! grpcurl comes from `make test-deps` (target/test-venv) or CONTACTIER_TEST_GRPCURL.

mod common;
use common::free_base;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const README: &str = include_str!("../../../README.md");

/// The ```sh blocks between two headings of the README.
fn sh_blocks(from: &str, to: &str) -> Vec<String> {
    let start = README.find(from).unwrap_or_else(|| panic!("the README has {from:?}"));
    let end =
        start + README[start..].find(to).unwrap_or_else(|| panic!("the README has {to:?} after {from:?}"));
    README[start..end]
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().expect("a closed block").to_owned())
        .collect()
}

fn grpcurl() -> PathBuf {
    if let Some(p) = std::env::var_os("CONTACTIER_TEST_GRPCURL") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv/bin/grpcurl");
    assert!(venv.exists(), "grpcurl is missing: run `make test-deps` (or set CONTACTIER_TEST_GRPCURL)");
    venv
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `127.0.0.1:5005N` of the README on the test's ports.
fn moved(block: &str, base: u16) -> String {
    let mut out = block.to_owned();
    for n in 1..=4u16 {
        out = out.replace(&format!("127.0.0.1:5005{n}"), &format!("127.0.0.1:{}", base + n - 1));
    }
    out
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let grpcurl = grpcurl();
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    // As the README starts it: `cargo run --bin contactier -- --manual-clock --clock-start ...`.
    let start = README
        .split("cargo run --bin contactier --\n--manual-clock --clock-start ")
        .nth(1)
        .and_then(|s| s.split('`').next())
        .expect("the README says how to start with the manual clock");
    let env = [
        ("CONTACTIER_DATA_DIR", dir.path().to_str().unwrap().to_owned()),
        ("CONTACTIER_BASE_PORT", base.to_string()),
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_contactier"))
        .args(["--manual-clock", "--clock-start", start])
        .envs(env.iter().cloned())
        .env_remove("CONTACTIER_JWT_SECRET")
        .env_remove("DATABASE_URL")
        .env_remove("CONTACTIER_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let token = lines
        .by_ref()
        .map(|l| l.unwrap())
        .find_map(|l| l.strip_prefix("TOKEN=").map(str::to_owned))
        .expect("the banner prints a token");
    std::thread::spawn(move || for _ in lines {});
    let _running = Running(child);

    // grpcurl and contactier as the README calls them; WatchAlerts streams until it is stopped.
    let bin = Path::new(env!("CARGO_BIN_EXE_contactier")).parent().unwrap().to_owned();
    let path = format!(
        "{}:{}:{}",
        grpcurl.parent().unwrap().display(),
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let prelude = format!(
        "set -euo pipefail\n\
         grpcurl() {{ if [[ \"$*\" == *WatchAlerts* ]]; then timeout 3 {g} \"$@\" || [[ $? == 124 ]]; else {g} \"$@\"; fi; }}\n",
        g = grpcurl.display()
    );
    let mut blocks = sh_blocks("## Calling it", "### Errors");
    assert!(blocks.len() >= 3, "the walk-through's blocks: {blocks:#?}");
    blocks.extend(sh_blocks("## The command line", "## Kubernetes"));
    let mut all = String::new();
    for block in &blocks {
        all.push_str(&moved(block, base));
    }
    let out = Command::new("bash")
        .args(["-c", &format!("{prelude}{all}")])
        .current_dir(dir.path())
        .envs(env.iter().cloned())
        .env("TOKEN", &token)
        .env("PATH", path)
        .env_remove("CONTACTIER_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the walk-through stopped:\n{stdout}\n{stderr}");
    for expected in [
        "contactier.contacts.v1.ContactsService", // grpcurl list
        "\"status\": \"SERVING\"",                // health
        "\"manual\": true",                       // the clock
        "\"email\": \"ada@example.com\"",         // CreateContact
        "import ",                                // ctl import's summary
        "changed ",                               // ctl set-status
        "marketing contacts ",                    // ctl usage
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in:\n{stdout}\n{stderr}");
    }
    // The import made both rows; the last line (ctl token) is one JWT.
    assert!(stdout.contains("2 rows read, 2 created"), "{stdout}");
    assert_eq!(stdout.lines().last().unwrap().split('.').count(), 3, "{stdout}");
}
