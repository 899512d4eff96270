//! Where webhooks may point: https only, and never at loopback, private, link-local (cloud
//! metadata), shared, multicast or otherwise special addresses, unless
//! `LINKGATE_WEBHOOK_ALLOW_PRIVATE` allows them (and http). The URL is checked when the webhook
//! is created (its host, and what the host resolves to then), and every connection is checked
//! again on the address actually connected to ([`allowed`]), so a name that resolves elsewhere
//! later (DNS rebinding) cannot reach inside either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::link::dest;

/// Whether linkgate may connect to `ip` without `LINKGATE_WEBHOOK_ALLOW_PRIVATE`: a public
/// unicast address.
pub(crate) fn allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => public_v4(v4),
            None => public_v6(v6),
        },
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: cloud metadata services
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 is a metadata address)
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64: an IPv4 address inside
        || (s[0] == 0x2002) // 6to4: an IPv4 address inside
        || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

/// A webhook URL's host and port, as connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub https: bool,
    /// The host as written (an IPv6 literal without its brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Parses a URL [`validate_url`] accepted.
pub(crate) fn target(url: &str) -> Option<Target> {
    let uri: http::Uri = url.parse().ok()?;
    let https = match uri.scheme_str()? {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Some(Target {
        https,
        host,
        port,
        path: if path.is_empty() { "/".into() } else { path },
    })
}

/// Checks a webhook URL without resolving it: an absolute https URL (http too when private
/// targets are allowed) with no user-info or fragment, at most 2,048 bytes, whose host is not
/// `localhost` or a literal address [`allowed`] refuses. Returns it normalised.
pub(crate) fn validate_url(raw: &str, allow_private: bool) -> Result<String, String> {
    let url = dest::validate(raw, &[])?;
    if url.contains('#') {
        return Err("must not have a fragment".into());
    }
    let t = target(&url).ok_or("is not a URL linkgate can post to")?;
    if !t.https && !allow_private {
        return Err("must be an https URL".into());
    }
    if allow_private {
        return Ok(url);
    }
    let host = t.host.to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return Err("must not point at this machine (localhost)".into());
    }
    if let Ok(ip) = host.parse::<IpAddr>()
        && !allowed(ip)
    {
        return Err(format!(
            "must not point at a loopback, private, link-local or reserved address ({ip})"
        ));
    }
    Ok(url)
}

/// Resolves the URL's host now and refuses it when any address it resolves to is refused (a
/// name that does not resolve yet is accepted: every delivery checks again).
pub(crate) async fn check_resolved(url: &str, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let Some(t) = target(url) else {
        return Err("is not a URL linkgate can post to".into());
    };
    let lookup = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::lookup_host((t.host.as_str(), t.port)),
    )
    .await;
    if let Ok(Ok(addrs)) = lookup {
        for a in addrs {
            if !allowed(a.ip()) {
                return Err(format!(
                    "resolves to a loopback, private, link-local or reserved address ({})",
                    a.ip()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn special_addresses_are_refused_and_public_ones_allowed() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(!allowed(bad.parse().unwrap()), "{bad} must be refused");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(allowed(good.parse().unwrap()), "{good} must be allowed");
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_host_and_shape() {
        assert_eq!(
            validate_url("https://hooks.example.com/lg?x=1", false).unwrap(),
            "https://hooks.example.com/lg?x=1"
        );
        for (bad, why) in [
            ("http://hooks.example.com/", "https"),
            ("https://127.0.0.1/", "loopback"),
            ("https://[::1]:8443/", "loopback"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://localhost/", "localhost"),
            ("https://a.localhost/", "localhost"),
            ("javascript:alert(1)", "http"),
            ("https://u:p@hooks.example.com/", "user-info"),
            ("https://hooks.example.com/#x", "fragment"),
            ("/relative", "absolute"),
        ] {
            let e = validate_url(bad, false).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(validate_url("http://127.0.0.1:9/x", true).is_ok());
        let t = target("https://[2606:4700::1]:8443/a?b").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("2606:4700::1", 8443, "/a?b")
        );
        assert_eq!(target("http://h.example").unwrap().path, "/");
    }

    proptest! {
        /// Any text is refused or accepted without a panic, and what is accepted parses.
        #[test]
        fn any_text_validates_without_panicking(raw in "\\PC{0,60}", private in any::<bool>()) {
            if let Ok(url) = validate_url(&raw, private) {
                prop_assert!(target(&url).is_some(), "{}", url);
            }
        }

        /// Every IPv4 address gets the same answer as itself mapped into IPv6.
        #[test]
        fn mapped_addresses_answer_like_their_ipv4(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from(bits);
            prop_assert_eq!(allowed(IpAddr::V4(v4)), allowed(IpAddr::V6(v4.to_ipv6_mapped())));
        }
    }
}
