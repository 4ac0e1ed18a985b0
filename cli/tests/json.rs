//! `parley --json` against a running `parley dev`, both as processes: each
//! command prints its result as JSON on standard output and nothing else
//! (frames a command was not asked for, such as a device's backlog, stay
//! out), `watch` prints one JSON object per event, and a refusal prints
//! nothing on standard output and exits with its code.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use parley_server::ports;
use serde_json::Value;

/// The ports `parley dev --ports BASE` takes, as offsets from BASE: the five
/// services and the gateway's WebSocket (the web client is not served).
const OFFSETS: [u16; 6] = [0, 1, 2, 3, 4, 10];

/// How long anything here may take on a busy machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// `parley` with no `PARLEY_*` variable of the shell.
fn parley() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PARLEY_") {
            command.env_remove(name);
        }
    }
    command
}

/// A `parley dev` of this test's own, on ports below the ephemeral range.
struct Suite {
    dev: Running,
    base: u16,
    data: tempfile::TempDir,
}

/// What a test does with `parley dev`'s standard output.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DevOutput {
    /// Read, so the suite is known to serve once its banner says so.
    Read,
    /// Closed at once, as when the reader of a pipe goes away.
    Closed,
}

impl Suite {
    fn start() -> Self {
        Self::start_with(DevOutput::Read)
    }

    fn start_with(output: DevOutput) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = u64::from(std::process::id()) ^ u64::from(now.subsec_nanos());
        for attempt in 0..20u64 {
            // 20,000 to 29,999: clear of the defaults, of the dev cluster check
            // (31,151 on) and of the ephemeral range (32,768 on).
            let base = u16::try_from(20_000 + (seed + attempt * 613) % 10_000).expect("a port");
            let free = OFFSETS
                .iter()
                .all(|offset| TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
            if !free {
                continue;
            }
            if let Some(suite) = Self::start_on(base, output) {
                return suite;
            }
        }
        panic!("no free ports for parley dev after 20 tries");
    }

    /// The suite on `base`, once it serves; `None` if it could not bind
    /// (another process took a port in between).
    fn start_on(base: u16, output: DevOutput) -> Option<Self> {
        let data = tempfile::tempdir().expect("a data directory");
        let log = std::fs::File::create(data.path().join("dev.log")).expect("a log file");
        let mut child = parley()
            .args(["dev", "--ports", &base.to_string(), "--data"])
            .arg(data.path())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("parley dev starts");
        let stdout = child.stdout.take().expect("stdout");
        if output == DevOutput::Closed {
            drop(stdout);
            return Self::serving(child, base, data);
        }
        let lines = lines_of(stdout);
        let deadline = Instant::now() + PATIENCE;
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with("parley dev suite:") => {
                    return Some(Self {
                        dev: Running(child),
                        base,
                        data,
                    });
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = child.wait();
                    return None;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    panic!("parley dev did not say it serves within {PATIENCE:?}");
                }
            }
        }
    }

    /// The suite `child` runs on `base`, once a command gets an answer from
    /// it; `None` if it could not bind.
    fn serving(child: Child, base: u16, data: tempfile::TempDir) -> Option<Self> {
        let mut suite = Self {
            dev: Running(child),
            base,
            data,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if suite.run(&["unread", "--as", "probe"]).status.success() {
                return Some(suite);
            }
            if let Ok(Some(status)) = suite.dev.0.try_wait() {
                let log = suite.log();
                assert!(
                    log.contains("cannot listen"),
                    "parley dev exited ({status}):\n{log}"
                );
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "parley dev did not answer within {PATIENCE:?}:\n{}",
                suite.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `parley --json` with this suite's addresses and `args`.
    fn command(&self, args: &[&str]) -> Command {
        let url = |port: u16| format!("http://127.0.0.1:{}", self.base + (port - ports::GATEWAY));
        let mut command = parley();
        command
            .arg("--json")
            .args(["--gateway", &url(ports::GATEWAY)])
            .args(["--message", &url(ports::MESSAGE)])
            .args(["--receipt", &url(ports::RECEIPT)])
            .args(["--notification", &url(ports::NOTIFICATION)])
            .args(args);
        command
    }

    /// What `parley dev` logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("dev.log")).unwrap_or_default()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("parley runs")
    }

    /// The one JSON value a command that succeeds prints.
    fn json(&self, args: &[&str]) -> Value {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "parley {args:?} failed with {}: {}\nparley dev on {} logged:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.base,
            self.log()
        );
        let stdout = String::from_utf8(output.stdout).expect("UTF-8");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "parley {args:?} printed one line of JSON, not {stdout:?}"
        );
        serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("parley {args:?}: {e} in {stdout:?}"))
    }

    /// `json(args)` until `done` holds of it.
    fn json_until(&self, args: &[&str], done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.json(args);
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "parley {args:?} still prints {value}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A child process, killed when dropped (a failed assertion included).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines `from` writes, as they come; once no one listens, the rest is
/// still read (a child whose output pipe closed would fail to print).
fn lines_of(from: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    rx
}

fn number(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is a number in {value}"))
}

fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is a string in {value}"))
        .to_owned()
}

#[test]
fn every_command_prints_json_and_only_json() {
    let suite = Suite::start();

    let token = suite.json(&["token", "alice"]);
    assert_eq!(
        text(&token, "token").split('.').count(),
        3,
        "a JWT: {token}"
    );

    let group = suite.json(&["create-group", "--as", "alice", "json check", "bob"]);
    let gid = number(&group, "gid");
    assert!(gid > 0);
    assert_eq!(text(&group, "name"), "json check");
    let gid_arg = gid.to_string();
    let gid_arg = gid_arg.as_str();

    let added = suite.json(&["add-members", "--as", "alice", gid_arg, "carol"]);
    assert_eq!(added["added"], serde_json::json!(["carol"]));
    assert_eq!(number(&added, "gid"), gid);

    let policy = suite.json(&["receipt-policy", "--as", "alice", gid_arg, "full"]);
    assert_eq!(text(&policy, "policy"), "full");

    let first = suite.json(&["send", "--as", "alice", gid_arg, "first"]);
    let second = suite.json(&["send", "--as", "alice", gid_arg, "second"]);
    assert_eq!(number(&first, "gid"), gid);
    assert_eq!(number(&second, "seq"), number(&first, "seq") + 1);
    assert_ne!(number(&second, "msgid"), number(&first, "msgid"));
    // Bob's stream gets alice's two messages as its backlog while it sends:
    // they are not the command's result and stay off its output.
    let third = suite.json(&["send", "--as", "bob", gid_arg, "from bob"]);
    assert_eq!(number(&third, "seq"), number(&second, "seq") + 1);

    // Carol watches, reading each message: one JSON object a message, in order.
    // It runs until her reads are in (acks have no answer to wait for).
    let mut watch = Running(
        suite
            .command(&["watch", "--as", "carol", "--read"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("parley watch starts"),
    );
    let events = lines_of(watch.0.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = events
            .recv_timeout(PATIENCE)
            .expect("a message within the patience");
        let event: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e} in {line:?}"));
        if event["event"] == "message" {
            assert_eq!(number(&event, "gid"), gid);
            seen.push((
                number(&event, "seq"),
                text(&event, "sender"),
                text(&event, "text"),
            ));
        }
    }
    let seq = |result: &Value| number(result, "seq");
    assert_eq!(
        seen,
        [
            (seq(&first), "alice".to_owned(), "first".to_owned()),
            (seq(&second), "alice".to_owned(), "second".to_owned()),
            (seq(&third), "bob".to_owned(), "from bob".to_owned()),
        ]
    );

    // Alice sees carol's read in the receipts of her first message.
    let msgid = number(&first, "msgid").to_string();
    let receipts = suite.json_until(
        &["receipts", "--as", "alice", gid_arg, &msgid],
        |receipts| {
            receipts[0]["read"]
                .as_array()
                .is_some_and(|read| read.iter().any(|uid| uid == "carol"))
        },
    );
    assert_eq!(number(&receipts[0], "msgid"), number(&first, "msgid"));
    assert_eq!(number(&receipts[0], "recipient_count"), 2);
    drop(watch);

    // Bob has alice's messages unread until he acks them.
    let in_group = |groups: &Value| -> Option<Value> {
        groups
            .as_array()
            .expect("an array")
            .iter()
            .find(|g| g["gid"] == gid)
            .cloned()
    };
    let unread = suite.json(&["unread", "--as", "bob"]);
    let entry = in_group(&unread).unwrap_or_else(|| panic!("group {gid} unread for bob: {unread}"));
    assert!(number(&entry, "unread") >= 2, "{entry}");
    let last = seq(&third).to_string();
    let acked = suite.json(&["ack", "--as", "bob", gid_arg, &last]);
    assert_eq!(
        acked,
        serde_json::json!({ "gid": gid, "up_to_seq": seq(&third), "read": true })
    );
    suite.json_until(&["unread", "--as", "bob"], |unread| {
        in_group(unread).is_none()
    });

    let hidden = suite.json(&["receipt-privacy", "--as", "bob", "private"]);
    assert_eq!(hidden["private"], true);
    assert_eq!(
        suite.json(&["receipt-privacy", "--as", "bob"])["private"],
        true
    );
}

#[test]
fn a_refusal_prints_its_error_as_json_on_stderr_and_exits_with_its_code() {
    let suite = Suite::start();
    let group = suite.json(&["create-group", "--as", "alice", "refusals", "bob"]);
    let gid = number(&group, "gid").to_string();

    // Bob is a member but not an admin: not allowed (4).
    let denied = suite.run(&["add-members", "--as", "bob", &gid, "dave"]);
    assert_eq!(denied.status.code(), Some(4), "{denied:?}");
    assert!(denied.stdout.is_empty(), "nothing on stdout: {denied:?}");
    let error = error_of(&denied);
    assert_eq!(error["kind"], "not_allowed");
    assert_eq!(error["reason"], "NOT_AN_ADMIN");
    assert!(
        text(&error, "message").starts_with("add members: "),
        "{error}"
    );

    // Dave is no member: the send is refused through the gateway (4 as well).
    let outsider = suite.run(&["send", "--as", "dave", &gid, "let me in"]);
    assert_eq!(outsider.status.code(), Some(4), "{outsider:?}");
    assert!(
        outsider.stdout.is_empty(),
        "nothing on stdout: {outsider:?}"
    );
    assert_eq!(error_of(&outsider)["reason"], "NOT_A_MEMBER");

    // No such group: refused (3).
    let missing = suite.run(&["add-members", "--as", "alice", "999999", "dave"]);
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");
    assert_eq!(error_of(&missing)["kind"], "refused");
}

/// The one JSON error a failed `parley --json` printed on standard error.
fn error_of(output: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of JSON on stderr: {stderr:?}");
    let value: Value =
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e} in {stderr:?}"));
    value["error"].clone()
}

/// `parley dev` whose output pipe closed (its reader went away) serves on:
/// it wrote its banner with `println!` once, which panicked on the closed
/// pipe and took the suite down.
#[test]
fn parley_dev_serves_on_when_its_output_is_closed() {
    let suite = Suite::start_with(DevOutput::Closed);
    let group = suite.json(&["create-group", "--as", "alice", "closed", "bob"]);
    assert!(number(&group, "gid") > 0);
}

#[test]
fn an_unreachable_suite_exits_5() {
    // A port nothing listens on: bound, then released.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let output = parley()
        .args(["--json", "--receipt", &url, "unread", "--as", "alice"])
        .output()
        .expect("parley runs");
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    assert!(output.stdout.is_empty());
    let error = error_of(&output);
    assert_eq!(error["kind"], "unreachable");
    assert_eq!(error["reason"], Value::Null);
}
