//! A redis-server of a test's own (the machine's Redis package), on a free
//! port; killed and waited for when dropped, also when it never came up.
//! `start` keeps nothing on disk; `start_durable` writes every command to
//! its append-only file, so a test can stop and restart it and see what
//! survived.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    durable: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// A Redis that keeps every write (`appendfsync always`).
    pub fn start_durable() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let child = spawn(port, dir.path(), durable);
        let server = RedisServer {
            child,
            port,
            dir,
            durable,
        };
        server.wait_up();
        server
    }

    fn wait_up(&self) {
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `toml` (from `config_toml`) with its store on this Redis, keys under
    /// `prefix`: how replicas of one deployment are configured.
    pub fn store_in(&self, toml: &str, prefix: &str) -> String {
        toml.replace(
            "[store]\n",
            &format!(
                "[store]\nredis_url = \"{}\"\nredis_prefix = \"{prefix}\"\n",
                self.url()
            ),
        )
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.child = spawn(self.port, self.dir.path(), self.durable);
        self.wait_up();
    }
}

fn spawn(port: u16, dir: &Path, durable: bool) -> Child {
    let port = port.to_string();
    let mut args = vec!["--bind", "127.0.0.1", "--port", &port, "--save", ""];
    if durable {
        args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
    }
    Command::new("redis-server")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
