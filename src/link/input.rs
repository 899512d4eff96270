//! Validation of API input into links and link patches.
//!
//! Input is read as a JSON object and checked field by field, so that one answer can name every bad
//! field (and, in bulk, every bad item). Unknown fields are refused rather than ignored: a typo such
//! as `destiantion` must not silently mint a link without the intended destination.

use serde_json::{Map, Value};

use super::{Link, LinkKind, code, dest};
use crate::field::FieldError;

/// Longest campaign, owner or recipient id, in bytes.
pub(crate) const MAX_ID_LEN: usize = 128;
/// Most tags on one link, and longest tag in bytes.
pub(crate) const MAX_TAGS: usize = 32;
pub(crate) const MAX_TAG_LEN: usize = 64;
/// Largest `metadata` object, serialised, in bytes.
pub(crate) const MAX_METADATA_BYTES: usize = 4096;

/// What validation needs to know beyond the input.
pub struct Rules<'a> {
    pub allowlist: &'a [String],
    pub now: i64,
}

/// Collects field errors, stamping each with the bulk item index.
pub(crate) struct Errors<'e> {
    pub index: Option<usize>,
    pub list: &'e mut Vec<FieldError>,
}

impl Errors<'_> {
    fn push(&mut self, field: &str, message: impl Into<String>) {
        self.list.push(FieldError {
            index: self.index,
            field: field.into(),
            message: message.into(),
        });
    }

    fn check<T>(&mut self, field: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|m| self.push(field, m)).ok()
    }
}

pub(crate) fn string(v: &Value) -> Result<&str, String> {
    v.as_str().ok_or_else(|| "must be a string".to_string())
}

pub(crate) fn id(v: &Value) -> Result<Option<String>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let s = string(v)?;
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(format!("must be 1 to {MAX_ID_LEN} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(Some(s.to_string()))
}

fn url(v: &Value, rules: &Rules) -> Result<String, String> {
    dest::validate(string(v)?, rules.allowlist)
}

fn opt_url(v: &Value, rules: &Rules) -> Result<Option<String>, String> {
    if v.is_null() { Ok(None) } else { url(v, rules).map(Some) }
}

fn expires(v: &Value, rules: &Rules, must_be_future: bool) -> Result<Option<i64>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let t = crate::time::parse_rfc3339(string(v)?).ok_or("must be an RFC 3339 date-time")?;
    if must_be_future && t <= rules.now {
        return Err("must be in the future".into());
    }
    Ok(Some(t))
}

fn tags(v: &Value) -> Result<Vec<String>, String> {
    let arr = v.as_array().ok_or("must be an array of strings")?;
    if arr.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} tags"));
    }
    arr.iter()
        .map(|t| match t.as_str() {
            Some(s) if !s.is_empty() && s.len() <= MAX_TAG_LEN => Ok(s.to_string()),
            _ => Err(format!("each tag must be a string of 1 to {MAX_TAG_LEN} bytes")),
        })
        .collect()
}

pub(crate) fn metadata(v: &Value) -> Result<Option<Map<String, Value>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => {
            let size = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
            if size > MAX_METADATA_BYTES {
                return Err(format!("must be at most {MAX_METADATA_BYTES} bytes as JSON"));
            }
            Ok(Some(m.clone()))
        }
        _ => Err("must be an object".into()),
    }
}

/// Parses a link to mint. `code` is left empty when the caller wants a generated one.
pub(crate) fn parse_new(obj: &Map<String, Value>, rules: &Rules, errs: &mut Errors) -> Option<Link> {
    let before = errs.list.len();
    let mut link = Link::new(String::new(), String::new(), rules.now);
    let mut has_destination = false;
    for (key, v) in obj {
        match key.as_str() {
            "destination" => {
                has_destination = true;
                if let Some(d) = errs.check(key, url(v, rules)) {
                    link.destination = d;
                }
            }
            "code" if !v.is_null() => {
                let r = string(v).and_then(|c| code::validate_custom(c).map(|_| c.to_string()).map_err(|e| e.message));
                if let Some(c) = errs.check(key, r) {
                    link.code = c;
                }
            }
            "code" => {}
            "kind" => {
                let r = string(v).and_then(|k| {
                    LinkKind::parse(k).ok_or_else(|| {
                        "must be one of sms, qr_order, qr_service, qr_receipt, qr_lead, qr_product, web".to_string()
                    })
                });
                if let Some(k) = errs.check(key, r) {
                    link.kind = k;
                }
            }
            "campaign_id" => link.campaign_id = errs.check(key, id(v)).flatten(),
            "owner_id" => link.owner_id = errs.check(key, id(v)).flatten(),
            "recipient_id" => link.recipient_id = errs.check(key, id(v)).flatten(),
            "expires_at" => link.expires_at = errs.check(key, expires(v, rules, true)).flatten(),
            "max_clicks" => {
                let r = match v.as_u64() {
                    _ if v.is_null() => Ok(None),
                    Some(n) if (1..=u32::MAX as u64).contains(&n) => Ok(Some(n as u32)),
                    _ => Err(format!("must be an integer from 1 to {}", u32::MAX)),
                };
                link.max_clicks = errs.check(key, r).flatten();
            }
            "redirect_status" => {
                let r = match v.as_u64() {
                    Some(s @ (301 | 302 | 307 | 308)) => Ok(s as u16),
                    _ => Err("must be one of 301, 302, 307, 308".to_string()),
                };
                if let Some(s) = errs.check(key, r) {
                    link.redirect_status = s;
                }
            }
            "fallback_url" => link.fallback_url = errs.check(key, opt_url(v, rules)).flatten(),
            "ios_destination" => link.ios_destination = errs.check(key, opt_url(v, rules)).flatten(),
            "android_destination" => link.android_destination = errs.check(key, opt_url(v, rules)).flatten(),
            "track_conversions" => {
                if let Some(b) = errs.check(key, v.as_bool().ok_or_else(|| "must be a boolean".to_string())) {
                    link.track_conversions = b;
                }
            }
            "tags" => link.tags = errs.check(key, tags(v)).unwrap_or_default(),
            "metadata" => link.metadata = errs.check(key, metadata(v)).flatten(),
            other => errs.push(other, "unknown field"),
        }
    }
    if !has_destination {
        errs.push("destination", "is required");
    }
    (errs.list.len() == before).then_some(link)
}

/// A change to a link: only the fields `PATCH` may touch (docs/API.md). `Some(None)` clears a field.
#[derive(Debug, Default, Clone)]
pub struct LinkPatch {
    pub destination: Option<String>,
    pub expires_at: Option<Option<i64>>,
    pub disabled: Option<bool>,
    pub fallback_url: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<Option<Map<String, Value>>>,
}

impl LinkPatch {
    pub fn parse(obj: &Map<String, Value>, rules: &Rules) -> Result<Self, Vec<FieldError>> {
        let mut list = Vec::new();
        let mut errs = Errors {
            index: None,
            list: &mut list,
        };
        let mut p = LinkPatch::default();
        for (key, v) in obj {
            match key.as_str() {
                "destination" => p.destination = errs.check(key, url(v, rules)),
                "expires_at" => p.expires_at = errs.check(key, expires(v, rules, false)),
                "disabled" => p.disabled = errs.check(key, v.as_bool().ok_or_else(|| "must be a boolean".into())),
                "fallback_url" => p.fallback_url = errs.check(key, opt_url(v, rules)),
                "tags" => p.tags = errs.check(key, tags(v)),
                "metadata" => p.metadata = errs.check(key, metadata(v)),
                other => errs.push(
                    other,
                    "unknown or immutable field (PATCH takes destination, expires_at, disabled, fallback_url, tags, metadata)",
                ),
            }
        }
        if list.is_empty() { Ok(p) } else { Err(list) }
    }

    pub fn apply(&self, link: &mut Link, now: i64) {
        if let Some(d) = &self.destination {
            link.destination = d.clone();
        }
        if let Some(e) = self.expires_at {
            link.expires_at = e;
        }
        if let Some(d) = self.disabled {
            link.disabled = d;
        }
        if let Some(f) = &self.fallback_url {
            link.fallback_url = f.clone();
        }
        if let Some(t) = &self.tags {
            link.tags = t.clone();
        }
        if let Some(m) = &self.metadata {
            link.metadata = m.clone();
        }
        link.updated_at = now;
    }
}

/// Overlays `item` on `defaults` (bulk minting: each item overrides the defaults).
pub(crate) fn merged(defaults: &Map<String, Value>, item: &Map<String, Value>) -> Map<String, Value> {
    let mut m = defaults.clone();
    for (k, v) in item {
        m.insert(k.clone(), v.clone());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Link, Vec<FieldError>> {
        let rules = Rules {
            allowlist: &[],
            now: 1_800_000_000,
        };
        let mut list = Vec::new();
        let link = parse_new(
            v.as_object().unwrap(),
            &rules,
            &mut Errors {
                index: Some(7),
                list: &mut list,
            },
        );
        link.ok_or(list)
    }

    #[test]
    fn a_full_link_parses() {
        let l = parse(json!({
            "destination": "https://brand.example/a", "code": "spring-26", "kind": "sms",
            "campaign_id": "c1", "owner_id": "o1", "recipient_id": "r1", "max_clicks": 3,
            "redirect_status": 307, "expires_at": "2030-01-01T00:00:00Z", "tags": ["a"],
            "metadata": {"k": 1}, "track_conversions": false
        }))
        .unwrap();
        assert_eq!(
            (l.code.as_str(), l.kind, l.redirect_status, l.max_clicks),
            ("spring-26", LinkKind::Sms, 307, Some(3))
        );
        assert!(!l.track_conversions);
    }

    #[test]
    fn every_bad_field_is_named_with_the_item_index() {
        let errs = parse(json!({
            "destination": "javascript:alert(1)", "code": "no", "kind": "fax", "max_clicks": 0,
            "redirect_status": 200, "expires_at": "2001-01-01T00:00:00Z", "tags": [1],
            "metadata": {"x": "y".repeat(5000)}, "campaign_id": 5, "colour": "red"
        }))
        .unwrap_err();
        let mut fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "campaign_id",
                "code",
                "colour",
                "destination",
                "expires_at",
                "kind",
                "max_clicks",
                "metadata",
                "redirect_status",
                "tags"
            ]
        );
        assert!(errs.iter().all(|e| e.index == Some(7)));
    }

    #[test]
    fn destination_is_required() {
        let errs = parse(json!({"code": "abcd"})).unwrap_err();
        assert_eq!(errs[0].field, "destination");
    }

    /// Any JSON value, a few levels deep.
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "\\PC{0,20}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("\\PC{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const FIELDS: [&str; 12] = [
        "destination",
        "code",
        "kind",
        "campaign_id",
        "owner_id",
        "recipient_id",
        "expires_at",
        "max_clicks",
        "redirect_status",
        "tags",
        "metadata",
        "track_conversions",
    ];

    proptest::proptest! {
        #[test]
        fn ids_are_bounded_text_without_control_characters(s in "\\PC{0,80}|[\\x00-\\x1f]{1,3}") {
            match id(&Value::String(s.clone())) {
                Ok(Some(got)) => {
                    proptest::prop_assert_eq!(&got, &s);
                    proptest::prop_assert!(!s.is_empty() && s.len() <= MAX_ID_LEN);
                    proptest::prop_assert!(!s.chars().any(char::is_control), "{:?}", s);
                }
                Ok(None) => proptest::prop_assert!(false, "a string is never null"),
                Err(_) => proptest::prop_assert!(s.is_empty() || s.len() > MAX_ID_LEN || s.chars().any(char::is_control)),
            }
        }

        #[test]
        fn any_link_body_parses_or_is_refused_without_panicking(
            values in proptest::collection::vec(any_json(), FIELDS.len()),
            present in proptest::collection::vec(proptest::bool::ANY, FIELDS.len()),
        ) {
            let mut obj = Map::new();
            for ((f, v), p) in FIELDS.iter().zip(values).zip(present) {
                if p {
                    obj.insert(f.to_string(), v);
                }
            }
            if let Ok(link) = parse(Value::Object(obj)) {
                proptest::prop_assert!(link.destination.starts_with("http"));
            }
        }
    }
}
