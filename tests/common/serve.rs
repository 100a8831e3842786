//! `stepgate serve` as a child process, and the development identities
//! the engine trusts.
//!
//! Include it with `#[path = "common/serve.rs"] mod serve;`. The engine
//! serves the release example's policy and reviewers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn release_file(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/release")
        .join(name)
        .display()
        .to_string()
}

/// `stepgate serve` as a child process; SIGKILLed on drop.
#[derive(Debug)]
pub struct Engine {
    pub child: Option<Child>,
    args: Vec<String>,
    kid: Option<String>,
}

impl Engine {
    /// Starts an engine and waits until it serves.
    pub fn start(nats: &str, data: &Path, dev: &Path) -> Self {
        let args = vec![
            "serve".into(),
            "--nats".into(),
            nats.into(),
            "--data".into(),
            data.display().to_string(),
            "--policy".into(),
            release_file("policy.cedar"),
            "--trust-bundle".into(),
            dev.join("bundle.json").display().to_string(),
            "--reviewers".into(),
            release_file("reviewers.yaml"),
        ];
        let mut engine = Self {
            child: None,
            args,
            kid: None,
        };
        engine.spawn();
        engine
    }

    /// Starts the process again with the same arguments and waits until
    /// it prints that it serves (subscribed, ready for requests).
    pub fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stepgate"))
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the engine did not say it serves");
        // "stepgate serving on URL (data DIR, engine KID)"
        let kid = line
            .rsplit_once("engine ")
            .and_then(|(_, k)| k.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        self.kid = Some(kid.to_string());
        self.child = Some(child);
    }

    /// The engine's key id, as it printed it.
    pub fn kid(&self) -> &str {
        self.kid.as_deref().unwrap_or_default()
    }

    /// Kills the process with SIGKILL: no goodbye to anyone.
    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits (up to 10 s) for the process to exit;
    /// returns its exit code.
    pub fn sigterm(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        send_signal(child.id(), "-TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the engine did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Sends `signal` (e.g. `-TERM`) to `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// A process stopped with SIGSTOP; SIGCONT when dropped, so a failing
/// assertion never leaves it stopped.
pub struct Stopped(u32);

impl Stopped {
    /// Stops `pid`.
    pub fn new(pid: u32) -> Self {
        send_signal(pid, "-STOP");
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// Runs `stepgate ARGS PATH`, asserts it succeeded, returns its stdout.
pub fn stepgate_ok(args: &[&str], path: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `stepgate dev init --dir DIR`.
pub fn dev_init(dir: &Path) {
    stepgate_ok(&["dev", "init", "--dir"], dir);
}

/// A JWT-SVID for `who` from the development trust domain in `dev`.
pub fn dev_svid(dev: &Path, who: &str) -> String {
    stepgate_ok(&["dev", "svid", who, "--dir"], dev)
        .trim()
        .to_string()
}
