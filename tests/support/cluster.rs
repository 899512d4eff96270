//! [`ClusterGuard`]: a real Redis Cluster of 3 masters and 3 replicas on free loopback ports
//! (and free cluster-bus ports), made with `redis-cli --cluster create`, killed on drop.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{RedisGuard, TempDir, free_port, stream_entries_on, test_ca, tls_args};

/// Stream keys linkgate writes on a cluster when `LINKGATE_STREAM_SHARDS` is unset.
pub(crate) const CLUSTER_STREAM_SHARDS: u32 = 16;

pub(crate) struct ClusterGuard {
    /// Masters first (as `redis-cli --cluster create` assigns them), then their replicas.
    pub nodes: Vec<RedisGuard>,
    /// Each node's `redis-server` arguments (port, bus port, nodes file), to restart it.
    args: Vec<Vec<String>>,
    /// Each node's TLS port, for a cluster started with [`ClusterGuard::start_with_tls`].
    tls_ports: Vec<u16>,
    dir: TempDir,
}

impl ClusterGuard {
    /// Starts 6 nodes, creates the cluster, and returns once every slot is served and every
    /// replica has synced (about 2–3 s).
    pub(crate) fn start() -> Self {
        Self::start_with(false)
    }

    /// A cluster whose nodes also speak TLS (clients, cluster bus and replication) on a second
    /// port, with a certificate signed by a CA made for the test ([`ClusterGuard::ca_file`]);
    /// [`ClusterGuard::url`] names the TLS ports (`rediss+cluster://`), and the plain ports stay
    /// for the test's own reads.
    pub(crate) fn start_with_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let dir = TempDir::new();
        if tls {
            test_ca(&dir);
        }
        let at = |f: &str| dir.0.join(f).to_string_lossy().to_string();
        let mut tls_ports = Vec::new();
        let args: Vec<Vec<String>> = (0..6)
            .map(|_| {
                let port = free_port();
                let conf = dir.0.join(format!("nodes-{port}.conf")).to_string_lossy().to_string();
                let bus = free_port().to_string();
                let data_dir = dir.0.to_string_lossy().to_string();
                let mut args = [
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "2000",
                    "--repl-diskless-sync-delay",
                    "0",
                    "--dir",
                    &data_dir,
                ]
                .map(String::from)
                .to_vec();
                if tls {
                    let port = free_port();
                    tls_ports.push(port);
                    args.extend(tls_args(&dir, port));
                    args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
                }
                args
            })
            .collect();
        let nodes: Vec<RedisGuard> = args.iter().map(|a| spawn_node(a)).collect();
        let mut create = Command::new("redis-cli");
        let addrs: Vec<String> = if tls {
            create.args(["--tls", "--cacert", &at("ca.crt")]);
            tls_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
        } else {
            nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect()
        };
        let out = create
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
        let guard = Self {
            nodes,
            args,
            tls_ports,
            dir,
        };
        guard.wait_healthy(Duration::from_secs(20));
        guard
    }

    /// Waits until killed node `i` is marked failed and another node serves its slots (its
    /// replica was promoted), then until the cluster is healthy.
    pub(crate) fn wait_failover(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let port = format!("127.0.0.1:{}@", self.nodes[i].port);
        let alive = self.nodes.iter().find(|n| n.alive()).expect("a live node");
        loop {
            let nodes = alive.cmd_text(&["CLUSTER", "NODES"]);
            let line = nodes.lines().find(|l| l.contains(&port)).expect("the node is known");
            let f: Vec<&str> = line.split(' ').collect();
            if f[2].contains("fail") && !f[2].contains("fail?") && f.len() <= 8 {
                break;
            }
            assert!(Instant::now() < deadline, "no failover within {within:?}:\n{nodes}");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_healthy(deadline.saturating_duration_since(Instant::now()));
    }

    /// Waits until every live replica has everything its master had when this was called.
    pub(crate) fn wait_replicated(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for master in self.nodes.iter().filter(|n| n.alive()) {
            let info = master.info("replication");
            if !info.contains("role:master") {
                continue;
            }
            let field = |text: &str, name: &str| -> i64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                    .unwrap_or(-1)
            };
            let offset = field(&info, "master_repl_offset:");
            for replica in self.nodes.iter().filter(|n| n.alive()) {
                loop {
                    let r = replica.info("replication");
                    let follows = r.contains(&format!("master_port:{}\r", master.port));
                    if !follows || field(&r, "slave_repl_offset:") >= offset {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "replica {} behind within {within:?}",
                        replica.port
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Starts node `i` again after it was killed, on its port with its nodes file: a master that
    /// failed over comes back as its successor's replica.
    pub(crate) fn restart(&mut self, i: usize) {
        self.nodes[i] = spawn_node(&self.args[i]);
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

    /// `redis+cluster://` naming the three masters as seeds (`rediss+cluster://` and their TLS
    /// ports for a TLS cluster).
    pub(crate) fn url(&self) -> String {
        if !self.tls_ports.is_empty() {
            let seeds: Vec<String> = self.tls_ports[..3].iter().map(|p| format!("127.0.0.1:{p}")).collect();
            return format!("rediss+cluster://{}", seeds.join(","));
        }
        let seeds: Vec<String> = self.nodes[..3]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The CA file a TLS cluster's certificates are signed by.
    pub(crate) fn ca_file(&self) -> String {
        self.dir.0.join("ca.crt").to_string_lossy().to_string()
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

    /// Every event on the default stream shards (`linkgate:events:{0}` … `{15}`), as
    /// `(type, json)`.
    pub(crate) fn events(&self) -> Vec<(String, serde_json::Value)> {
        let mut conn = self.conn();
        (0..CLUSTER_STREAM_SHARDS)
            .flat_map(|i| stream_entries_on(&mut conn, &format!("linkgate:events:{{{i}}}")))
            .collect()
    }

    /// The index in [`ClusterGuard::nodes`] of a live replica of node `master`.
    pub(crate) fn replica_of(&self, master: usize) -> usize {
        let follows = format!("master_port:{}\r", self.nodes[master].port);
        self.nodes
            .iter()
            .position(|n| n.alive() && n.info("replication").contains(&follows))
            .expect("the master has a replica")
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

/// A cluster node from its arguments (the first two are `--port <port>`).
fn spawn_node(args: &[String]) -> RedisGuard {
    let port: u16 = args[1].parse().unwrap();
    let rest: Vec<&str> = args[2..].iter().map(String::as_str).collect();
    RedisGuard::spawn(port, &rest)
}
