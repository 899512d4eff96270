//! TLS to Redis (`rediss://`, what managed Redis services require): which certificate
//! authorities a connection trusts, shared by redis-rs (the store and the invalidation
//! subscriber) and the event sink's own connection ([`crate::resp`]), so all three trust the same.
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
