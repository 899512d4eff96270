//! A redis-server for a bench: on a free loopback port, without persistence, in a directory of
//! its own (a `dump.rdb` left where the bench runs would otherwise be loaded, and measured: one
//! in the repository root made Redis about 30% slower per event), killed on drop; optionally a one-node Redis Cluster (every slot on it), so the cluster code paths can be
//! measured against the single-node ones on the same Redis work.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) struct RedisServer {
    child: Child,
    pub(crate) port: u16,
    /// Its working directory, removed on drop.
    dir: std::path::PathBuf,
    cluster: bool,
}

impl RedisServer {
    pub(crate) fn start(cluster: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("linkgate-bench-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--dir").arg(&dir).args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        if cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
        }
        let child = cmd.stdout(Stdio::null()).spawn().expect("redis-server on PATH");
        let server = Self {
            child,
            port,
            dir,
            cluster,
        };
        let mut con = loop {
            match redis::Client::open(server.url().as_str()).unwrap().get_connection() {
                Ok(c) => break c,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if cluster {
            let _: () = redis::cmd("CLUSTER")
                .arg(&["ADDSLOTSRANGE", "0", "16383"])
                .query(&mut con)
                .unwrap();
            while !redis::cmd("CLUSTER")
                .arg("INFO")
                .query::<String>(&mut con)
                .unwrap()
                .contains("cluster_state:ok")
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        server
    }

    /// The node's own `redis://` URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// What `LINKGATE_REDIS_URL` names it by: `redis+cluster://` for a cluster.
    pub(crate) fn linkgate_url(&self) -> String {
        if self.cluster {
            format!("redis+cluster://127.0.0.1:{}", self.port)
        } else {
            self.url()
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
