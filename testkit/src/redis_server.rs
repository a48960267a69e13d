//! A real `redis-server` (Debian package `redis-server`) on a free loopback port, for the tests
//! of the shared store: started without persistence, stopped (SIGKILL) and restarted on the
//! same port for fault tests, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    listener: Listener,
}

/// How the server is reached.
#[derive(Clone)]
enum Listener {
    Tcp,
    /// TLS only (`--port 0 --tls-port`), with this certificate, key and CA (PEM files).
    Tls {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
    /// A Unix socket only (`--port 0 --unixsocket`).
    Unix(PathBuf),
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers.
    pub fn start() -> RedisServer {
        RedisServer::start_on(Listener::Tcp)
    }

    /// Starts `redis-server` speaking TLS only, on a free loopback port, with this certificate
    /// and key; `ca` is what `redis-cli` verifies it with.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        RedisServer::start_on(Listener::Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: ca.to_owned(),
        })
    }

    /// Starts `redis-server` on a Unix socket only.
    pub fn start_unix(socket: &Path) -> RedisServer {
        RedisServer::start_on(Listener::Unix(socket.to_owned()))
    }

    fn start_on(listener: Listener) -> RedisServer {
        let mut server = RedisServer {
            port: crate::free_port(),
            child: None,
            listener,
        };
        server.restart();
        server
    }

    /// The URL the gateway is given: `redis://`, `rediss://` or `redis+unix://`.
    pub fn url(&self) -> String {
        match &self.listener {
            Listener::Tcp => format!("redis://127.0.0.1:{}/0", self.port),
            Listener::Tls { .. } => format!("rediss://127.0.0.1:{}/0", self.port),
            Listener::Unix(socket) => format!("redis+unix://{}", socket.display()),
        }
    }

    /// The arguments that make the server (`redis-server`) and a client (`redis-cli`) use
    /// the listener.
    fn listener_args(&self) -> (Vec<String>, Vec<String>) {
        let port = self.port.to_string();
        let s = |p: &Path| p.display().to_string();
        match &self.listener {
            Listener::Tcp => (
                vec!["--port".into(), port.clone()],
                vec!["-h".into(), "127.0.0.1".into(), "-p".into(), port],
            ),
            Listener::Tls { cert, key, ca } => (
                vec![
                    "--port".into(),
                    "0".into(),
                    "--tls-port".into(),
                    port.clone(),
                    "--tls-cert-file".into(),
                    s(cert),
                    "--tls-key-file".into(),
                    s(key),
                    "--tls-ca-cert-file".into(),
                    s(ca),
                    "--tls-auth-clients".into(),
                    "no".into(),
                ],
                vec![
                    "-h".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port,
                    "--tls".into(),
                    "--cacert".into(),
                    s(ca),
                ],
            ),
            Listener::Unix(socket) => (
                vec![
                    "--port".into(),
                    "0".into(),
                    "--unixsocket".into(),
                    s(socket),
                ],
                vec!["-s".into(), s(socket)],
            ),
        }
    }

    /// Kills the server (as a crash would); its data is gone.
    pub fn stop(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`Self::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(self.listener_args().0)
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server must be installed (Debian package redis-server; .ci/run installs it)",
            );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pings() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, the case a
    /// client's timeout is for.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`Self::pause`]d server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status();
        }
    }

    /// Whether the server answers `PING`.
    pub fn pings(&self) -> bool {
        self.command(&["PING"]).is_some_and(|r| r.trim() == "PONG")
    }

    /// Runs one command through `redis-cli` (from the same Debian package) and returns its
    /// output, for checks in tests (`DBSIZE`, `KEYS`).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(self.listener_args().1)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
