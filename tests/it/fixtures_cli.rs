//! `sophgate test`: the shipped fixtures pass, a wrong fixture fails with a useful message, a
//! malformed fixture file is refused, and the real binary reports and exits accordingly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use sophgate::config::Config;
use sophgate::tools::fixtures::{self, FixtureReport};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The config `-c` gives in CI (every shipped fixture names its own anyway).
fn default_config_path() -> PathBuf {
    repo().join("fixtures/config/defaults.yml")
}

fn default_config() -> Config {
    Config::from_file(&default_config_path()).unwrap_or_else(|e| panic!("{e}"))
}

/// Every fixture file shipped in `fixtures/` (what `fixtures/*.yml` expands to).
fn shipped() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml") && p.is_file())
        .collect();
    files.sort();
    files
}

/// A fresh directory under the system temp dir.
fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sophgate-fixtures-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn assert_all_passed(reports: &[FixtureReport]) {
    let failed: Vec<&FixtureReport> = reports.iter().filter(|r| !r.passed).collect();
    assert!(
        failed.is_empty(),
        "failing fixtures:\n{}",
        fixtures::render(reports)
    );
}

#[tokio::test]
async fn fixtures_of_existing_features_pass() {
    let files = [
        repo().join("fixtures/defaults.yml"),
        repo().join("fixtures/field_aliases.yml"),
    ];
    let reports = fixtures::run(default_config(), &files).await.unwrap();
    assert_eq!(reports.len(), 9, "{}", fixtures::render(&reports));
    assert_all_passed(&reports);
    assert!(fixtures::render(&reports).ends_with("9 passed, 0 failed"));
}

/// Every shipped fixture, one per bundled plugin included (each with its own config under
/// `fixtures/config/`).
#[tokio::test]
async fn every_shipped_fixture_passes() {
    let files = shipped();
    for plugin in [
        "field_aliases",
        "headers",
        "sophnet_project",
        "reasoning_to_content",
    ] {
        assert!(
            files.iter().any(|f| f.file_stem().unwrap() == plugin),
            "no fixture file for the bundled plugin {plugin}"
        );
    }
    let reports = fixtures::run(default_config(), &files).await.unwrap();
    assert_all_passed(&reports);
}

const WRONG: &str = r#"
fixtures:
  - name: passes
    request:
      key: sk-fixture-alice
      body: { messages: [{ role: user, content: hi }] }
    expect_upstream:
      path: /api/open-apis/v1/chat/completions
      body: { model: DeepSeek-V3 }
  - name: wrong path, header, body and status
    request:
      key: sk-fixture-alice
      headers: { x-debug: "1" }
      body: { model: DeepSeek-V3, messages: [{ role: user, content: hi }] }
    expect_upstream:
      path: /somewhere/else
      headers: { x-debug: null, x-team: blue }
      body: { model: DeepSeek-R1, messages: [{ role: user, content: hi }] }
      body_absent: [temperature]
    expect_response:
      status: 201
  - name: never reaches the upstream
    request:
      key: sk-wrong
      body: { model: DeepSeek-V3 }
    expect_upstream:
      path: /api/open-apis/v1/chat/completions
  - name: wrong events
    request:
      key: sk-fixture-alice
      body: { model: DeepSeek-V3, stream: true }
    upstream_response:
      events: [{ choices: [] }, "[DONE]"]
    expect_response:
      events: [{ choices: [1] }, "[DONE]"]
"#;

#[tokio::test]
async fn a_wrong_fixture_fails_with_useful_messages() {
    let dir = temp_dir();
    let file = dir.join("wrong.yml");
    std::fs::write(&file, WRONG).unwrap();
    let reports = fixtures::run(default_config(), std::slice::from_ref(&file))
        .await
        .unwrap();
    let text = fixtures::render(&reports);
    assert_eq!(reports.len(), 4, "{text}");
    assert!(reports[0].passed, "{text}");
    assert!(reports.iter().skip(1).all(|r| !r.passed), "{text}");
    assert!(reports.iter().all(|r| r.file == file), "{text}");

    let f = &reports[1].failures;
    let has = |needle: &str| f.iter().any(|m| m.contains(needle));
    assert!(
        has(
            r#"upstream path: expected "/somewhere/else", got "/api/open-apis/v1/chat/completions""#
        ),
        "{f:?}"
    );
    assert!(
        has(r#"upstream header x-debug: expected absent, got "1""#),
        "{f:?}"
    );
    assert!(
        has(r#"upstream header x-team: expected "blue", but it is absent"#),
        "{f:?}"
    );
    assert!(
        has(r#"upstream body: model: expected "DeepSeek-R1", got "DeepSeek-V3""#),
        "{f:?}"
    );
    assert!(
        has("upstream body: `temperature` should be absent, found 0.7"),
        "{f:?}"
    );
    assert!(has("response status: expected 201, got 200"), "{f:?}");
    assert_eq!(f.len(), 6, "{f:?}");

    let f = &reports[2].failures;
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("the gateway did not call the upstream; it answered 401 "),
        "{f:?}"
    );
    assert!(f[0].contains("invalid_api_key"), "{f:?}");

    let f = &reports[3].failures;
    assert_eq!(
        f,
        &vec!["event 1: choices: expected [1], got []".to_string()],
        "{text}"
    );
    assert!(text.ends_with("1 passed, 3 failed"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_malformed_fixture_file_is_refused_naming_file_and_key() {
    let dir = temp_dir();
    let typo = dir.join("typo.yml");
    std::fs::write(
        &typo,
        "name: typo\nrequest: { body: {} }\nexpect_upstrem: { path: /x }\n",
    )
    .unwrap();
    let bad_method = dir.join("bad_method.yml");
    std::fs::write(&bad_method, "request: { method: \"GE T\" }\n").unwrap();
    let missing = dir.join("missing.yml");
    let err = fixtures::run(
        default_config(),
        &[typo.clone(), bad_method.clone(), missing],
    )
    .await
    .unwrap_err();
    assert!(err.contains(&typo.display().to_string()), "{err}");
    assert!(err.contains("expect_upstrem"), "{err}");
    assert!(err.contains(&bad_method.display().to_string()), "{err}");
    assert!(err.contains("request.method"), "{err}");
    assert!(err.contains("missing.yml"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_fixture_config_that_does_not_load_fails_its_fixtures() {
    let dir = temp_dir();
    std::fs::write(dir.join("broken.yml"), "api_keys: {}\nno_such_key: 1\n").unwrap();
    let file = dir.join("f.yml");
    std::fs::write(&file, "config: broken.yml\nrequest: {}\n").unwrap();
    let reports = fixtures::run(default_config(), std::slice::from_ref(&file))
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].name, "f");
    assert!(!reports[0].passed);
    let msg = reports[0].failures.join("\n");
    assert!(msg.contains("config does not load"), "{msg}");
    assert!(msg.contains("no_such_key"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real binary: `sophgate test -c fixtures/config/defaults.yml fixtures/*.yml` prints the
/// report and exits 0 when all pass, 1 otherwise.
#[test]
fn the_binary_runs_the_shipped_fixtures_and_exits_by_result() {
    let bin = env!("CARGO_BIN_EXE_sophgate");
    let out = Command::new(bin)
        .current_dir(repo())
        .arg("test")
        .arg("-c")
        .arg("fixtures/config/defaults.yml")
        .args(shipped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("PASS"), "{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");

    let dir = temp_dir();
    let wrong = dir.join("wrong.yml");
    std::fs::write(&wrong, WRONG).unwrap();
    let out = Command::new(bin)
        .current_dir(repo())
        .arg("test")
        .arg("-c")
        .arg("fixtures/config/defaults.yml")
        .arg(&wrong)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  never reaches the upstream"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 3 failed"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
