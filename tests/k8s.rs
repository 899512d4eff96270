//! The Kubernetes manifests agree with the binary. `k8s/validate.sh` checks them against the
//! Kubernetes schemas; this checks what a schema cannot:
//! - every variable the ConfigMap and the example Secret set is one linkgate reads (a misspelt name
//!   would be ignored, and the default used);
//! - together they make a config that validates;
//! - the container ports, the probes and the data volume match that config;
//! - the grace period outlasts the drain deadline plus the preStop pause;
//! - the Redis URL names the dev Redis Service in the kustomization's namespace.
//!
//! The manifests are flat YAML written by hand, so a line reader is enough here.

use std::collections::HashMap;
use std::path::Path;

use linkgate::{Config, VARS};

fn manifest(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `KEY: "value"` entries under a ConfigMap's `data:` or a Secret's `stringData:`.
fn string_map(yaml: &str, section: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut inside = false;
    for line in yaml.lines() {
        if !line.starts_with(' ') {
            inside = line.trim_end() == format!("{section}:");
            continue;
        }
        let entry = line.trim();
        if !inside || entry.starts_with('#') {
            continue;
        }
        let (key, value) = entry.split_once(": ").expect("a `KEY: value` line");
        map.insert(key.to_string(), value.trim_matches('"').to_string());
    }
    map
}

/// The number after `key:` on the first line that has it (after a `-` list marker, too).
fn number_after(yaml: &str, key: &str) -> u64 {
    yaml.lines()
        .map(|l| l.trim().trim_start_matches("- "))
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no `{key}:` in the manifest"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("`{key}:` is not a number: {e}"))
}

fn deployment_env() -> HashMap<String, String> {
    let mut env = string_map(&manifest("configmap.yaml"), "data");
    env.extend(string_map(&manifest("secret.example.yaml"), "stringData"));
    env
}

#[test]
fn configmap_and_secret_set_only_variables_linkgate_reads() {
    let env = deployment_env();
    assert!(env.len() >= 10, "read too few entries: {env:?}");
    for key in env.keys().filter(|k| *k != "RUST_LOG") {
        assert!(
            VARS.iter().any(|v| v.name == key),
            "k8s sets {key}, which linkgate does not read"
        );
    }
}

#[test]
fn configmap_and_secret_make_a_valid_config_that_the_pod_matches() {
    let env = deployment_env();
    let config = Config::from_lookup(|var| env.get(var).cloned()).expect("the k8s config validates");
    assert!(config.redis_url.is_some(), "the manifests run in Redis mode");

    let deployment = manifest("deployment.yaml");
    let ports = |name: &str| {
        let at = deployment
            .find(&format!("- name: {name}\n"))
            .unwrap_or_else(|| panic!("no port {name}"));
        number_after(&deployment[at..], "containerPort")
    };
    assert_eq!(ports("http"), u64::from(config.listen.port()));
    assert_eq!(ports("admin"), u64::from(config.admin_listen.port()));
    assert!(
        config.admin_listen.ip().is_unspecified(),
        "Prometheus scrapes the admin port from outside the pod"
    );
    for probe in ["path: /readyz", "path: /healthz"] {
        assert!(deployment.contains(probe), "the deployment probes {probe}");
    }
    let data_dir = format!("mountPath: {}", config.data_dir.display());
    assert!(
        deployment.contains(&data_dir),
        "the spool's directory is a mounted volume (the root filesystem is read-only)"
    );

    let grace = number_after(&deployment, "terminationGracePeriodSeconds");
    let pre_stop = number_after(
        &deployment[deployment.find("preStop:").expect("a preStop hook")..],
        "seconds",
    );
    assert!(
        grace > config.drain_timeout.as_secs() + pre_stop,
        "grace period {grace} s must outlast the drain ({} s) plus the preStop pause ({pre_stop} s)",
        config.drain_timeout.as_secs()
    );
}

#[test]
fn the_redis_url_names_the_dev_redis_service() {
    let env = deployment_env();
    let kustomization = manifest("kustomization.yaml");
    let namespace = kustomization
        .lines()
        .find_map(|l| l.strip_prefix("namespace: "))
        .expect("the kustomization sets a namespace");
    let service = manifest("redis-service.yaml");
    let name = service
        .lines()
        .find_map(|l| l.strip_prefix("  name: "))
        .expect("the Redis Service has a name");
    let port = number_after(&service, "port");
    assert_eq!(
        env["LINKGATE_REDIS_URL"],
        format!("redis://{name}.{namespace}.svc.cluster.local:{port}")
    );
}
