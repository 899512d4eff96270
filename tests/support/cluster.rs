//! [`ClusterGuard`]: a real Redis Cluster of 3 masters and 3 replicas on free loopback ports
//! (and free cluster-bus ports), made with `redis-cli --cluster create`, killed on drop.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{RedisGuard, TempDir, free_port};

pub(crate) struct ClusterGuard {
    /// Masters first (as `redis-cli --cluster create` assigns them), then their replicas.
    pub nodes: Vec<RedisGuard>,
    _dir: TempDir,
}

impl ClusterGuard {
    /// Starts 6 nodes, creates the cluster, and returns once every slot is served and every
    /// replica has synced (about 2–3 s).
    pub(crate) fn start() -> Self {
        let dir = TempDir::new();
        let nodes: Vec<RedisGuard> = (0..6)
            .map(|_| {
                let port = free_port();
                let conf = dir.0.join(format!("nodes-{port}.conf")).to_string_lossy().to_string();
                RedisGuard::spawn(
                    port,
                    &[
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-port",
                        &free_port().to_string(),
                        "--cluster-node-timeout",
                        "2000",
                        "--repl-diskless-sync-delay",
                        "0",
                        "--dir",
                        &dir.0.to_string_lossy(),
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs (it comes with redis-server: `apt-get install -y redis-server`)");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let guard = Self { nodes, _dir: dir };
        guard.wait_healthy(Duration::from_secs(20));
        guard
    }

    /// Waits until every live node sees all slots served and every live replica has synced.
    pub(crate) fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for node in self.nodes.iter().filter(|n| n.alive()) {
            loop {
                let info = node.cmd_text(&["CLUSTER", "INFO"]);
                let repl = node.info("replication");
                let synced = repl.contains("role:master") || repl.contains("master_link_status:up");
                if info.contains("cluster_state:ok") && synced {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster was not healthy within {within:?}:\n{info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `redis+cluster://` naming the three masters as seeds.
    pub(crate) fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..3]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// A connection of redis-rs's cluster client, for the test's own reads.
    pub(crate) fn conn(&self) -> redis::cluster::ClusterConnection {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.alive())
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect();
        redis::cluster::ClusterClient::new(nodes)
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// The index in [`ClusterGuard::nodes`] of the master serving `key` now.
    pub(crate) fn master_of(&self, key: &str) -> usize {
        let alive = self.nodes.iter().find(|n| n.alive()).expect("a live node");
        let slot: i64 = match alive.cmd(&["CLUSTER", "KEYSLOT", key]) {
            redis::Value::Int(s) => s,
            v => panic!("CLUSTER KEYSLOT answered {v:?}"),
        };
        for line in alive.cmd_text(&["CLUSTER", "NODES"]).lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse::<i64>().unwrap()..=b.parse::<i64>().unwrap()).contains(&slot),
                None => r.parse::<i64>().ok() == Some(slot),
            });
            if serves {
                let port: u16 = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no master serves slot {slot}");
    }
}
