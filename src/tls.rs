//! How linkgate reaches Redis: where it is ([`RedisTarget`]: one server, or the seed nodes of a
//! Redis Cluster) and, over TLS (`rediss://`, what managed Redis services require), which
//! certificate authorities a connection trusts, shared by redis-rs (the store, the invalidation
//! subscriber, the cluster sink) and the event sink's own connection ([`crate::resp`]), so all
//! trust the same.
//!
//! rustls with the `ring` provider; no client certificates (managed services authenticate with a
//! password, which the URL carries). With `LINKGATE_REDIS_CA_FILE` only that file's authorities
//! are trusted (a private CA); without it, the system's.

use std::sync::{Arc, OnceLock};

/// The authorities a `rediss://` connection trusts.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// PEM certificates of the trusted authorities; `None`: the system's.
    ca_pem: Option<Arc<[u8]>>,
    /// The event sink's client configuration, built on its first `rediss://` connection and
    /// shared by every reconnection (the system's authorities are read from disk once).
    config: Arc<OnceLock<Result<Arc<rustls::ClientConfig>, String>>>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &if self.ca_pem.is_some() { "file" } else { "system" })
            .finish()
    }
}

impl RedisTls {
    /// Trusts the authorities of a PEM file's contents; fails when it holds no certificate.
    pub fn with_ca_pem(pem: Vec<u8>) -> Result<Self, String> {
        let tls = Self {
            ca_pem: Some(pem.into()),
            config: Arc::default(),
        };
        if tls.roots()?.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        Ok(tls)
    }

    fn roots(&self) -> Result<rustls::RootCertStore, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| format!("is not valid PEM: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("holds a certificate rustls refuses: {e}"))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        Ok(roots)
    }

    /// The client configuration of the event sink's connection.
    pub(crate) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.config
            .get_or_init(|| {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(self.roots()?)
                    .with_no_client_auth();
                Ok(Arc::new(config))
            })
            .clone()
    }

    /// A redis-rs Cluster client for the seed nodes `nodes` (`redis://` or `rediss://` URLs, as
    /// [`RedisTarget::Cluster`] holds them), over TLS with these authorities when they are
    /// `rediss://`. Slot routing, `MOVED`/`ASK`, topology refresh and failover are the client's.
    pub(crate) fn cluster_client(
        &self,
        nodes: &[String],
        tune: impl FnOnce(redis::cluster::ClusterClientBuilder) -> redis::cluster::ClusterClientBuilder,
    ) -> redis::RedisResult<redis::cluster::ClusterClient> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.to_vec());
        if nodes.iter().any(|n| n.starts_with("rediss://")) {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: self.ca_pem.as_ref().map(|p| p.to_vec()),
            });
        }
        tune(builder).build()
    }

    /// A redis-rs client for `url`: over TLS with these authorities when it is `rediss://`.
    pub(crate) fn redis_client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        if !url.starts_with("rediss://") {
            return redis::Client::open(url);
        }
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: self.ca_pem.as_ref().map(|p| p.to_vec()),
            },
        )
    }
}

/// Where Redis is, as `LINKGATE_REDIS_URL` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RedisTarget {
    /// One server (`redis://`, `rediss://`, `unix://`, `redis+unix://`).
    Single(String),
    /// A Redis Cluster: `redis+cluster://[user:pass@]h1:p1,h2:p2[?params]` (or
    /// `rediss+cluster://` for TLS), split into one `redis://` (`rediss://`) URL per seed node,
    /// each with the same credentials and parameters. redis-rs has no URL for a cluster; this
    /// form is the one Lettuce and go-redis users know. Any one reachable seed is enough: the
    /// client learns the rest of the cluster from it.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Reads a `LINKGATE_REDIS_URL`; the message says what is wrong.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let cluster = [("redis+cluster://", "redis://"), ("rediss+cluster://", "rediss://")]
            .into_iter()
            .find_map(|(scheme, node)| url.strip_prefix(scheme).map(|rest| (node, rest)));
        let Some((node_scheme, rest)) = cluster else {
            if !["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|s| url.starts_with(s))
            {
                return Err("must start with redis://, rediss:// or redis+cluster://".into());
            }
            redis::Client::open(url).map_err(|e| format!("invalid URL: {e}"))?;
            return Ok(Self::Single(url.to_string()));
        };
        // `user:pass@` ends at the first `@`: a password's own `@` is written `%40`.
        let (auth, rest) = match rest.split_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        let (hosts, tail) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let params = match tail.strip_prefix('/') {
            None => tail,
            Some(path) => {
                let (db, params) = path.split_at(path.find('?').unwrap_or(path.len()));
                if !matches!(db, "" | "0") {
                    return Err("a cluster has only database 0".into());
                }
                params
            }
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .map(|h| format!("{node_scheme}{auth}{h}/{params}"))
            .collect();
        for (h, node) in hosts.split(',').zip(&nodes) {
            if h.is_empty() {
                return Err("names an empty node (write host:port,host:port)".into());
            }
            redis::Client::open(node.as_str()).map_err(|e| format!("invalid node {h}: {e}"))?;
        }
        Ok(Self::Cluster(nodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_names_each_seed_with_the_same_credentials() {
        assert_eq!(
            RedisTarget::parse("redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2:7001?protocol=resp3"),
            Ok(RedisTarget::Cluster(vec![
                "redis://u:p%40ss@10.0.0.1:7000/?protocol=resp3".into(),
                "redis://u:p%40ss@10.0.0.2:7001/?protocol=resp3".into(),
            ]))
        );
        assert_eq!(
            RedisTarget::parse("rediss+cluster://cache.example:6380/0"),
            Ok(RedisTarget::Cluster(vec!["rediss://cache.example:6380/".into()]))
        );
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379/2"),
            Ok(RedisTarget::Single("redis://127.0.0.1:6379/2".into()))
        );
        for bad in [
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1/3",
            "redis+cluster://",
            "http://a:1",
            "redis+cluster://a:notaport",
        ] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
