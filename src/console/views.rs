//! What pages show, shaped for the templates: sections of cards and tables, and the formatting
//! of numbers, money, rates and times. The numbers come from the API's answers as they are.

use serde_json::Value;

use super::i18n::Tr;

/// A figure with a label and a line beneath (a rate, say).
pub(crate) struct Card {
    pub label: &'static str,
    pub value: String,
    pub sub: String,
}

impl Card {
    pub(crate) fn new(label: &'static str, value: impl Into<String>) -> Self {
        Self {
            label,
            value: value.into(),
            sub: String::new(),
        }
    }

    /// The line beneath the figure.
    pub(crate) fn under(mut self, sub: String) -> Self {
        self.sub = sub;
        self
    }
}

pub(crate) struct Th {
    pub text: String,
    pub num: bool,
}

#[derive(Default)]
pub(crate) struct Cell {
    pub text: String,
    pub href: Option<String>,
    pub num: bool,
    pub wrap: bool,
    /// A button posting to this action (the session's token added).
    pub action: Option<(String, &'static str)>,
}

impl Cell {
    pub(crate) fn text(s: impl Into<String>) -> Self {
        Self {
            text: s.into(),
            ..Self::default()
        }
    }

    pub(crate) fn num(n: i64) -> Self {
        Self {
            text: count(n),
            num: true,
            ..Self::default()
        }
    }

    pub(crate) fn money(n: i64) -> Self {
        Self {
            text: money(n),
            num: true,
            ..Self::default()
        }
    }

    pub(crate) fn link(s: impl Into<String>, href: String) -> Self {
        Self {
            text: s.into(),
            href: Some(href),
            ..Self::default()
        }
    }

    pub(crate) fn wrap(s: impl Into<String>) -> Self {
        Self {
            text: s.into(),
            wrap: true,
            ..Self::default()
        }
    }
}

#[derive(Default)]
pub(crate) struct Row {
    pub cells: Vec<Cell>,
    /// A series row's time (Unix seconds) and value, read by the chart script.
    pub point: Option<(i64, i64)>,
}

#[derive(Default)]
pub(crate) struct Table {
    pub caption: String,
    pub head: Vec<Th>,
    pub rows: Vec<Row>,
    /// Draw the rows' points as a chart: its label and series name.
    pub chart: Option<(String, String)>,
}

impl Table {
    pub(crate) fn new(caption: impl Into<String>, head: &[(&str, bool)]) -> Self {
        Self {
            caption: caption.into(),
            head: head
                .iter()
                .map(|(text, num)| Th {
                    text: text.to_string(),
                    num: *num,
                })
                .collect(),
            ..Self::default()
        }
    }
}

/// One part of a page: a heading, and cards, a table, links, or why it is missing.
#[derive(Default)]
pub(crate) struct Section {
    pub title: String,
    pub cards: Vec<Card>,
    pub table: Option<Table>,
    pub note: Option<String>,
    pub error: Option<String>,
    pub links: Vec<(String, String)>,
}

impl Section {
    pub(crate) fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Self::default()
        }
    }

    /// A section whose data could not be read: says why (a key without the scope, a store error).
    pub(crate) fn failed(title: impl Into<String>, t: Tr, e: &crate::error::ApiError) -> Self {
        Self {
            title: title.into(),
            error: Some(why(t, e)),
            ..Self::default()
        }
    }
}

/// Why a part of a page is missing, as a reader is told.
pub(crate) fn why(t: Tr, e: &crate::error::ApiError) -> String {
    match e.status().as_u16() {
        403 | 422 => t.s("not_for_key").to_string(),
        404 => t.s("not_found").to_string(),
        _ => format!("{}: {}", t.s("error"), e.message),
    }
}

/// `1234567` → `1,234,567`.
pub(crate) fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Minor units (fen, cents) → `3,999.00`.
pub(crate) fn money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    format!("{sign}{}.{:02}", count((m / 100) as i64), m % 100)
}

/// A rate of the API (`0.9512`) → `95.1%`; `null` → `–`.
pub(crate) fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "–".to_string(), |r| format!("{:.1}%", r * 100.0))
}

/// An RFC 3339 time of the API → `2026-12-07 18:22` in `tz` (the service's zone,
/// `LINKGATE_TIMEZONE`: a store in Shanghai reads its own clock, not UTC).
pub(crate) fn when(v: &Value, tz: &jiff::tz::TimeZone) -> String {
    v.as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|t| t.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// An integer field of an API answer (0 when absent).
pub(crate) fn int(v: &Value, field: &str) -> i64 {
    v.get(field).and_then(Value::as_i64).unwrap_or(0)
}

/// A string field of an API answer (empty when absent or null).
pub(crate) fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

/// The array under `field` (empty when absent).
pub(crate) fn list<'a>(v: &'a Value, field: &str) -> &'a [Value] {
    v.get(field).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_money_rates_and_times_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(-1234567), "-1,234,567");
        assert_eq!(count(i64::MIN), "-9,223,372,036,854,775,808");
        assert_eq!(money(399900), "3,999.00");
        assert_eq!(money(-5), "-0.05");
        assert_eq!(pct(&json!(0.95)), "95.0%");
        assert_eq!(pct(&Value::Null), "–");
        let shanghai = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
        assert_eq!(when(&json!("2026-12-07T18:22:05+08:00"), &shanghai), "2026-12-07 18:22");
        assert_eq!(when(&json!("2026-12-07T18:22:05Z"), &shanghai), "2026-12-08 02:22");
        assert_eq!(
            when(&json!("2026-12-07T18:22:05Z"), &jiff::tz::TimeZone::UTC),
            "2026-12-07 18:22"
        );
        assert_eq!(when(&json!("春"), &shanghai), "");
    }

    proptest::proptest! {
        #[test]
        fn counts_keep_their_digits(n in proptest::num::i64::ANY) {
            proptest::prop_assert_eq!(count(n).replace(',', ""), n.to_string());
        }
    }
}
