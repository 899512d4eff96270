//! Unix seconds <-> RFC 3339 UTC strings, and durations such as `30d`.
//!
//! Parsing goes through maintained crates: `jiff` for RFC 3339 date-times (fractional seconds are
//! dropped, numeric offsets honoured) and `humantime` for durations. linkgate only keeps whole
//! seconds (`expires_at`, `created_at`, event timestamps); formatting always emits `Z`.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;

/// Seconds since the Unix epoch, now.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`; instants beyond jiff's range (years −9999 to
/// 9999) are clamped to it (nothing linkgate stores is near it: dates are validated when parsed).
pub(crate) fn format_rfc3339(secs: i64) -> String {
    let secs = secs.clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    let t = Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses an RFC 3339 date-time (`2026-11-24T08:00:00Z`, `…T08:00:00.5+08:00`) to Unix seconds,
/// rounding a fraction down.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    // jiff also accepts forms RFC 3339 does not (`2026-11-24T08Z`, offsets with seconds); the
    // shape check keeps the API to what RFC 3339 allows: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
    if !is_rfc3339_shaped(s) {
        return None;
    }
    s.parse::<Timestamp>().ok().map(|t| t.as_second())
}

fn is_rfc3339_shaped(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let fixed = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't' | b' ')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !fixed {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// Parses a duration such as `30d`, `12h`, `45m`, `90s` (or `1h 30m`) to whole seconds.
pub(crate) fn parse_duration_secs(s: &str) -> Option<u64> {
    humantime::parse_duration(s.trim()).ok().map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trips_known_instants() {
        for (s, secs) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2000-02-29T12:34:56Z", 951_827_696),
            ("2026-11-24T08:00:00Z", 1_795_507_200),
        ] {
            assert_eq!(parse_rfc3339(s), Some(secs), "{s}");
            assert_eq!(format_rfc3339(secs), s);
        }
    }

    #[test]
    fn honours_offsets_and_fractions() {
        assert_eq!(
            parse_rfc3339("2026-11-24T16:00:00.123+08:00"),
            parse_rfc3339("2026-11-24T08:00:00Z")
        );
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-24",
            "2026-11-24T08:00:00",
            "2026-11-24T08:00:00++5:00",
            "2026-11-24T08:00:00+5:00",
            "2026-11-24T08:00:00+08:00:00",
            "2026-11-24T08:00:00.Z",
            "tomorrow",
            "２０２６-11-24T08:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s}");
        }
    }

    #[test]
    fn extreme_instants_format_without_panicking() {
        assert!(format_rfc3339(i64::MAX).starts_with("9999-"));
        assert!(format_rfc3339(i64::MIN).starts_with("-9999-"));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration_secs("30d"), Some(2_592_000));
        assert_eq!(parse_duration_secs("2h"), Some(7200));
        assert_eq!(parse_duration_secs("20s"), Some(20));
        assert_eq!(parse_duration_secs("d"), None);
        assert_eq!(parse_duration_secs("ǅ"), None);
        assert_eq!(parse_duration_secs("5ǅ"), None);
        assert_eq!(parse_duration_secs(""), None);
    }

    proptest! {
        #[test]
        fn durations_never_panic(s in "\\PC{0,16}") {
            let _ = parse_duration_secs(&s);
        }

        #[test]
        fn date_times_never_panic(s in "\\PC{0,40}") {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn formatted_instants_parse_back(secs in -62_135_596_800i64..=253_402_128_000) {
            prop_assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Some(secs));
        }

        #[test]
        fn whole_seconds_in_any_offset(secs in 0i64..4_000_000_000, off_min in -(23 * 60 + 59)..=(23 * 60 + 59i64)) {
            let local = secs + off_min * 60;
            let stamp = format_rfc3339(local);
            let sign = if off_min < 0 { '-' } else { '+' };
            let text = format!("{}{sign}{:02}:{:02}", &stamp[..19], off_min.abs() / 60, off_min.abs() % 60);
            prop_assert_eq!(parse_rfc3339(&text), Some(secs));
        }
    }
}
