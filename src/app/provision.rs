//! Embedded-mode secrets: with no API key or click secret configured, the first start writes one
//! to the data directory (mode 0600) and later starts read it back. The path is logged, never the
//! secret.

use std::path::Path;

use crate::config::{ApiKey, Config, Scope};

pub(super) const ADMIN_KEY_FILE: &str = "admin.key";
pub(super) const CLICK_SECRET_FILE: &str = "click.secret";

fn read_or_create(path: &Path, len: usize) -> anyhow::Result<(String, bool)> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_string();
        anyhow::ensure!(s.len() >= 16, "{} is shorter than 16 characters", path.display());
        return Ok((s, false));
    }
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    let secret = format!("lg_{}", crate::link::code::generate_codes(len.div_ceil(8)).concat());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(path)?, format!("{secret}\n").as_bytes())?;
    Ok((secret, true))
}

pub(super) fn api_keys(config: &Config) -> anyhow::Result<Vec<ApiKey>> {
    if !config.api_keys.is_empty() {
        return Ok(config.api_keys.clone());
    }
    let path = config.data_dir.join(ADMIN_KEY_FILE);
    let (secret, created) = read_or_create(&path, 32)?;
    if created {
        tracing::info!(path = %path.display(), "no LINKGATE_API_KEYS set: wrote an admin API key");
    } else {
        tracing::info!(path = %path.display(), "using the admin API key from the data directory");
    }
    Ok(vec![ApiKey::new(&secret, vec![Scope::Admin])])
}

pub(super) fn click_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    match &config.click_secret {
        Some(s) => Ok(s.as_bytes().to_vec()),
        None => Ok(read_or_create(&config.data_dir.join(CLICK_SECRET_FILE), 40)?
            .0
            .into_bytes()),
    }
}
