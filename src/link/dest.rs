//! Destination URL rules: the open-redirect guard.
//!
//! A destination must be an absolute `http` or `https` URL with a host, at most 2,048 bytes, with
//! no whitespace, control characters, backslashes or user-info (`https://bank.com@evil.example` is a
//! classic phishing shape). Non-ASCII characters in the path, query or fragment are percent-encoded
//! so the `Location` header stays ASCII; a non-ASCII host must be given in its punycode (`xn--`) form.
//! With an allowlist configured, the host must equal one of its suffixes or end with `.<suffix>`.

/// Longest destination accepted, in bytes, after percent-encoding.
pub(crate) const MAX_URL_LEN: usize = 2048;

/// Validates `raw` and returns it normalised (lower-case scheme, non-ASCII percent-encoded).
pub(crate) fn validate(raw: &str, allowlist: &[String]) -> Result<String, String> {
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    if raw.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} bytes"));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    if raw.contains('\\') {
        return Err("must not contain a backslash".into());
    }
    let (scheme, rest) = raw.split_once("://").ok_or("must be an absolute http or https URL")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err("only http and https URLs are allowed".into());
    }
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let host = validate_authority(authority)?;
    if !allowlist.is_empty() && !host_allowed(&host, allowlist) {
        return Err(format!("host `{host}` is not in the destination allowlist"));
    }
    let mut out = String::with_capacity(raw.len() + 16);
    out.push_str(&scheme);
    out.push_str("://");
    out.push_str(authority);
    for c in tail.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if out.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} bytes once percent-encoded"));
    }
    Ok(out)
}

/// Checks `host[:port]` and returns the lower-cased host.
fn validate_authority(authority: &str) -> Result<String, String> {
    if authority.contains('@') {
        return Err("must not contain user-info (`user@`)".into());
    }
    if !authority.is_ascii() {
        return Err("a non-ASCII host must be written in punycode (xn--…)".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("has an unterminated IPv6 address")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("has an invalid IPv6 address".into());
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("has garbage after the IPv6 address")?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (h, p) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let h = h.strip_suffix('.').unwrap_or(h);
        let label_ok = |l: &str| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if h.is_empty() || h.len() > 253 || !h.split('.').all(label_ok) {
            return Err("must have a valid host".into());
        }
        (h.to_ascii_lowercase(), p)
    };
    if let Some(p) = port
        && (p.is_empty()
            || p.len() > 5
            || !p.bytes().all(|b| b.is_ascii_digit())
            || p.parse::<u32>().unwrap_or(0) > 65535)
    {
        return Err("has an invalid port".into());
    }
    Ok(host)
}

fn host_allowed(host: &str, allowlist: &[String]) -> bool {
    allowlist.iter().any(|suffix| {
        host == suffix
            || (host.len() > suffix.len()
                && host.ends_with(suffix.as_str())
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises_good_urls() {
        for (raw, want) in [
            (
                "https://brand.example/spring?x=1#top",
                "https://brand.example/spring?x=1#top",
            ),
            (
                "HTTP://Brand.Example:8080",
                "HTTP://Brand.Example:8080".replacen("HTTP", "http", 1).as_str(),
            ),
            ("https://[::1]:8443/a", "https://[::1]:8443/a"),
            (
                "https://shop.example/冰箱?q=洗衣机",
                "https://shop.example/%E5%86%B0%E7%AE%B1?q=%E6%B4%97%E8%A1%A3%E6%9C%BA",
            ),
        ] {
            assert_eq!(validate(raw, &[]).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn rejects_dangerous_or_broken_urls() {
        let long = format!("https://a.example/{}", "x".repeat(2048));
        for bad in [
            "javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "/relative/path",
            "//no-scheme.example",
            "ftp://files.example/x",
            "https://",
            "https://bank.example@evil.example/",
            "https://has space.example/",
            "https://a.example/ path",
            "https://a.example\\@evil.example",
            "https://a..example/",
            "https://a.example:99999/",
            "https://例え.jp/",
            long.as_str(),
        ] {
            assert!(validate(bad, &[]).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn allowlist_matches_host_suffixes_on_label_boundaries() {
        let allow = vec!["brand.cn".to_string()];
        assert!(validate("https://brand.cn/x", &allow).is_ok());
        assert!(validate("https://m.brand.cn/x", &allow).is_ok());
        assert!(validate("https://evilbrand.cn/x", &allow).is_err());
        assert!(validate("https://brand.cn.evil.example/x", &allow).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_refused_or_accepted_without_panicking(raw in "\\PC{0,60}") {
            let _ = validate(&raw, &["brand.example".to_string()]);
            let _ = validate(&raw, &[]);
        }

        #[test]
        fn what_is_accepted_is_an_ascii_http_url_and_stays_accepted(
            scheme in "(?i:https?)",
            host in "[a-z0-9-]{1,12}(\\.[a-z0-9-]{1,12}){0,3}",
            tail in "(/\\PC{0,30})?",
        ) {
            let raw = format!("{scheme}://{host}{tail}");
            if let Ok(url) = validate(&raw, &[]) {
                proptest::prop_assert!(url.is_ascii(), "{}", url);
                proptest::prop_assert!(url.starts_with("http://") || url.starts_with("https://"));
                proptest::prop_assert!(url.len() <= MAX_URL_LEN);
                proptest::prop_assert!(!url.chars().any(|c| c.is_whitespace() || c.is_control()));
                proptest::prop_assert_eq!(validate(&url, &[]), Ok(url.clone()), "normalising twice changes nothing");
            }
        }

        #[test]
        fn only_http_and_https_pass(scheme in "[a-z][a-z0-9+.-]{0,10}", rest in "\\PC{0,20}") {
            let raw = format!("{scheme}:{rest}");
            if validate(&raw, &[]).is_ok() {
                proptest::prop_assert!(scheme == "http" || scheme == "https", "{}", raw);
            }
        }
    }
}
