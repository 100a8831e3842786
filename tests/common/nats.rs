//! A private `nats-server` with JetStream for one test.
//!
//! Include it with `#[path = "common/nats.rs"] mod nats;`. The server
//! listens on a free loopback port, keeps JetStream data in its own
//! temporary directory, and is killed when the guard drops (also when the
//! test panics). `restart` brings it back on the same port and store, to
//! test riding out an outage.
#![allow(dead_code, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the server binary is; `NATS_SERVER` overrides.
pub fn binary() -> PathBuf {
    std::env::var_os("NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, within: Duration) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let until = Instant::now() + within;
    while Instant::now() < until {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A running `nats-server -js` on 127.0.0.1; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh JetStream store.
    pub fn start() -> Self {
        let store = tempfile::tempdir().expect("temp dir for JetStream");
        let mut server = Self {
            child: None,
            port: free_port(),
            store,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let bin = binary();
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-js")
            .arg("-sd")
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        if !wait_for_port(self.port, Duration::from_secs(10)) {
            self.kill();
            panic!("nats-server did not listen on 127.0.0.1:{}", self.port);
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory.
    pub fn store(&self) -> &Path {
        self.store.path()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the server (no-op when stopped).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it and starts it again on the same port with an empty store:
    /// every stream and bucket is lost.
    pub fn restart_empty(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.store.path()).expect("remove the JetStream store");
        std::fs::create_dir_all(self.store.path()).expect("recreate the store directory");
        self.spawn();
    }

    /// Stops it and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        // The port is free again once the old process is reaped.
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
