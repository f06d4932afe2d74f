//! A redis-server of a test's own (the machine's Redis package), on a free
//! port, keeping nothing on disk; killed and waited for when dropped, also
//! when it never came up. `replicas.rs` keeps its own, durable one (it
//! restarts Redis and checks what survived).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
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
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
