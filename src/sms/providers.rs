//! Delivery receipts in each provider's own format, and the answer each provider expects.
//!
//! | provider | body | message id | our correlation | status | answer |
//! |---|---|---|---|---|---|
//! | `aliyun` (Alibaba Cloud SMS, HTTP push) | JSON array | `biz_id` | `out_id` (set `OutId` to the code) | `success` | `{"code":0,"msg":"成功"}` |
//! | `tencent` (Tencent Cloud SMS callback) | JSON array | `sid` | none | `report_status` `SUCCESS`/`FAIL` | `{"result":0,"errmsg":"OK"}` |
//! | `twilio` (StatusCallback) | form-encoded, one status | `MessageSid` | none | `MessageStatus` | 204 |
//! | `generic` | `{"receipts": [{"message_id", "out_id"?, "status", "at"?, "error"?, "phone"?}]}` | `message_id` | `out_id` | `delivered`/`failed`/`pending` | `{"accepted": n}` |
//!
//! Alibaba's and Tencent's times are Beijing time without a zone (`2026-12-07 10:00:00`); Twilio
//! sends none (the arrival time is used). A body that does not parse, or an item without a message
//! id or with an unknown status, refuses the whole call (422, nothing recorded): the provider
//! retries, and a receipt never half-lands.

use serde_json::Value;

use super::{MAX_ID_BYTES, PhoneHasher, Receipt, Status};
use crate::field::FieldError;

/// Parses a provider's receipt body. `now` stands in for times a provider does not send.
pub(crate) fn parse(
    provider: &str,
    body: &[u8],
    phones: &PhoneHasher,
    now: i64,
) -> Result<Vec<Receipt>, Vec<FieldError>> {
    let one = |m: &str| vec![FieldError::new("body", m)];
    let receipts = match provider {
        "twilio" => vec![twilio(body, phones, now).map_err(|e| vec![e])?],
        _ => {
            let v: Value = serde_json::from_slice(body).map_err(|e| one(&format!("not JSON: {e}")))?;
            let items = match (provider, &v) {
                ("generic", Value::Object(o)) => o.get("receipts").and_then(Value::as_array),
                (_, Value::Array(a)) => Some(a),
                _ => None,
            }
            .ok_or_else(|| {
                one(if provider == "generic" {
                    "expected {\"receipts\": [...]}"
                } else {
                    "expected a JSON array"
                })
            })?;
            let mut out = Vec::with_capacity(items.len());
            let mut errors = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let r = match provider {
                    "aliyun" => aliyun(item, phones, now),
                    "tencent" => tencent(item, phones, now),
                    _ => generic(item, phones, now),
                };
                match r {
                    Ok(r) => out.push(r),
                    Err(mut e) => {
                        e.index = Some(i);
                        errors.push(e);
                    }
                }
            }
            if !errors.is_empty() {
                return Err(errors);
            }
            out
        }
    };
    Ok(receipts)
}

/// The answer body (and status) the provider expects for accepted receipts.
pub(crate) fn answer(provider: &str, accepted: usize) -> (http::StatusCode, Option<Value>) {
    use http::StatusCode;
    match provider {
        "aliyun" => (StatusCode::OK, Some(serde_json::json!({"code": 0, "msg": "成功"}))),
        "tencent" => (StatusCode::OK, Some(serde_json::json!({"result": 0, "errmsg": "OK"}))),
        "twilio" => (StatusCode::NO_CONTENT, None),
        _ => (StatusCode::OK, Some(serde_json::json!({"accepted": accepted}))),
    }
}

fn text<'a>(item: &'a Value, field: &str) -> Option<&'a str> {
    item.get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A message id (or code) field: present, at most [`MAX_ID_BYTES`].
fn id(item: &Value, field: &str) -> Result<String, FieldError> {
    match item.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_ID_BYTES => Ok(s.trim().to_string()),
        // Some providers send numeric ids.
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::String(s)) if s.len() > MAX_ID_BYTES => {
            Err(FieldError::new(field, format!("at most {MAX_ID_BYTES} bytes")))
        }
        _ => Err(FieldError::new(field, "required")),
    }
}

fn optional_id(item: &Value, field: &str) -> Result<Option<String>, FieldError> {
    match item.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        _ => id(item, field).map(Some),
    }
}

/// `YYYY-MM-DD HH:MM:SS` in Beijing time, or RFC 3339.
pub(crate) fn beijing_time(s: &str) -> Option<i64> {
    if let Some(t) = crate::time::parse_rfc3339(s) {
        return Some(t);
    }
    let dt: jiff::civil::DateTime = s.trim().parse().ok()?;
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").ok()?;
    dt.to_zoned(tz).ok().map(|z| z.timestamp().as_second())
}

fn time_or_now(item: &Value, field: &str, now: i64) -> Result<i64, FieldError> {
    match text(item, field) {
        None => Ok(now),
        Some(s) => beijing_time(s).ok_or_else(|| FieldError::new(field, "not a date-time")),
    }
}

fn aliyun(item: &Value, phones: &PhoneHasher, now: i64) -> Result<Receipt, FieldError> {
    let status = match item.get("success") {
        Some(Value::Bool(true)) => Status::Delivered,
        Some(Value::Bool(false)) => Status::Failed,
        Some(Value::String(s)) if s == "true" => Status::Delivered,
        Some(Value::String(s)) if s == "false" => Status::Failed,
        _ => return Err(FieldError::new("success", "true or false")),
    };
    Ok(Receipt {
        provider: "aliyun".into(),
        message_id: id(item, "biz_id")?,
        out_id: optional_id(item, "out_id")?,
        status,
        at: time_or_now(item, "report_time", now)?,
        error: (status == Status::Failed).then(|| text(item, "err_code").unwrap_or("").to_string()),
        phone_hash: text(item, "phone_number").and_then(|p| phones.hash(p)),
    })
}

fn tencent(item: &Value, phones: &PhoneHasher, now: i64) -> Result<Receipt, FieldError> {
    let status = match text(item, "report_status") {
        Some("SUCCESS") => Status::Delivered,
        Some("FAIL") => Status::Failed,
        _ => return Err(FieldError::new("report_status", "SUCCESS or FAIL")),
    };
    let phone = text(item, "mobile").map(|m| format!("{}{m}", text(item, "nationcode").unwrap_or("")));
    Ok(Receipt {
        provider: "tencent".into(),
        message_id: id(item, "sid")?,
        out_id: None,
        status,
        at: time_or_now(item, "user_receive_time", now)?,
        error: (status == Status::Failed).then(|| text(item, "errmsg").unwrap_or("").to_string()),
        phone_hash: phone.and_then(|p| phones.hash(&p)),
    })
}

fn twilio(body: &[u8], phones: &PhoneHasher, now: i64) -> Result<Receipt, FieldError> {
    let form: std::collections::HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let item: Value = form.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
    let status = match text(&item, "MessageStatus") {
        Some("delivered" | "read") => Status::Delivered,
        Some("undelivered" | "failed" | "canceled") => Status::Failed,
        Some(_) => Status::Pending,
        None => return Err(FieldError::new("MessageStatus", "required")),
    };
    Ok(Receipt {
        provider: "twilio".into(),
        message_id: id(&item, "MessageSid")?,
        out_id: None,
        status,
        at: now,
        error: text(&item, "ErrorCode").map(str::to_string),
        phone_hash: text(&item, "To").and_then(|p| phones.hash(p)),
    })
}

fn generic(item: &Value, phones: &PhoneHasher, now: i64) -> Result<Receipt, FieldError> {
    let status = match text(item, "status") {
        Some("delivered") => Status::Delivered,
        Some("failed") => Status::Failed,
        Some("pending" | "sent" | "queued") => Status::Pending,
        _ => return Err(FieldError::new("status", "delivered, failed or pending")),
    };
    let out_id = optional_id(item, "out_id")?;
    let message_id = match (id(item, "message_id"), &out_id) {
        (Ok(m), _) => m,
        (Err(_), Some(code)) => code.clone(),
        (Err(e), None) => return Err(e),
    };
    let at = match text(item, "at") {
        None => now,
        Some(s) => crate::time::parse_rfc3339(s).ok_or_else(|| FieldError::new("at", "an RFC 3339 date-time"))?,
    };
    Ok(Receipt {
        provider: "generic".into(),
        message_id,
        out_id,
        status,
        at,
        error: text(item, "error").map(str::to_string),
        phone_hash: text(item, "phone").and_then(|p| phones.hash(p)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phones() -> PhoneHasher {
        PhoneHasher::new(b"test-secret-0123456789")
    }

    /// Alibaba Cloud's documented sample (SmsReport), two numbers of one send.
    const ALIYUN: &str = r#"[
      {"phone_number":"13900000000","send_time":"2017-01-01 11:12:13","report_time":"2017-01-01 11:12:14","success":true,"err_code":"DELIVERED","err_msg":"用户接收成功","sms_size":"1","biz_id":"932702304080415357^0","out_id":"Ab3xK9q"},
      {"phone_number":"13900000001","send_time":"2017-01-01 11:12:13","report_time":"2017-01-01 11:12:15","success":false,"err_code":"MK:0001","err_msg":"","sms_size":"1","biz_id":"932702304080415357^0","out_id":"Bc4yL0r"}
    ]"#;

    /// Tencent Cloud's documented sample (短信下发状态通知).
    const TENCENT: &str = r#"[
      {"user_receive_time":"2015-10-17 08:03:04","nationcode":"86","mobile":"13xxxxxxxxx","report_status":"SUCCESS","errmsg":"DELIVRD","description":"用户短信送达成功","sid":"xxxxxxx"}
    ]"#;

    /// Twilio's StatusCallback parameters.
    const TWILIO: &str = "MessageSid=SM1342fe1b2c904d1ab04f0fc7a58abca9&MessageStatus=delivered&AccountSid=AC123&From=%2B15017250604&To=%2B15558675310&ApiVersion=2010-04-01";

    #[test]
    fn provider_samples_parse() {
        let r = parse("aliyun", ALIYUN.as_bytes(), &phones(), 0).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].status, r[1].status), (Status::Delivered, Status::Failed));
        assert_eq!(r[0].out_id.as_deref(), Some("Ab3xK9q"));
        assert_eq!(r[0].message_id, "932702304080415357^0");
        // 2017-01-01 11:12:14 in Beijing is 03:12:14 UTC.
        assert_eq!(r[0].at, crate::time::parse_rfc3339("2017-01-01T03:12:14Z").unwrap());
        assert_eq!(r[1].error.as_deref(), Some("MK:0001"));
        assert!(r[0].phone_hash.as_ref().is_some_and(|h| !h.contains("13900000000")));

        let r = parse("tencent", TENCENT.as_bytes(), &phones(), 0).unwrap();
        assert_eq!((r[0].message_id.as_str(), r[0].status), ("xxxxxxx", Status::Delivered));

        let r = parse("twilio", TWILIO.as_bytes(), &phones(), 77).unwrap();
        assert_eq!(r[0].message_id, "SM1342fe1b2c904d1ab04f0fc7a58abca9");
        assert_eq!((r[0].status, r[0].at), (Status::Delivered, 77));
        let queued = parse("twilio", b"MessageSid=SM1&MessageStatus=queued", &phones(), 0).unwrap();
        assert_eq!(queued[0].status, Status::Pending);

        let g = r#"{"receipts":[{"out_id":"Ab3xK9q","status":"delivered","at":"2026-12-07T02:00:00Z"}]}"#;
        let r = parse("generic", g.as_bytes(), &phones(), 0).unwrap();
        assert_eq!(
            (r[0].message_id.as_str(), r[0].out_id.as_deref()),
            ("Ab3xK9q", Some("Ab3xK9q"))
        );
    }

    #[test]
    fn bad_bodies_name_the_item_and_field() {
        let e = parse("aliyun", b"{}", &phones(), 0).unwrap_err();
        assert_eq!(e[0].field, "body");
        let e = parse(
            "aliyun",
            br#"[{"biz_id":"1","success":true},{"success":true}]"#,
            &phones(),
            0,
        )
        .unwrap_err();
        assert_eq!((e[0].index, e[0].field.as_str()), (Some(1), "biz_id"));
        let e = parse("tencent", br#"[{"sid":"1","report_status":"MAYBE"}]"#, &phones(), 0).unwrap_err();
        assert_eq!(e[0].field, "report_status");
        let e = parse("twilio", b"MessageSid=SM1", &phones(), 0).unwrap_err();
        assert_eq!(e[0].field, "MessageStatus");
        let long = format!(
            r#"{{"receipts":[{{"message_id":"{}","status":"delivered"}}]}}"#,
            "x".repeat(200)
        );
        assert_eq!(
            parse("generic", long.as_bytes(), &phones(), 0).unwrap_err()[0].field,
            "message_id"
        );
        assert!(parse("generic", "\u{feff}nope".as_bytes(), &phones(), 0).is_err());
    }

    proptest::proptest! {
        /// Any body, for any provider: receipts or named errors, never a panic.
        #[test]
        fn any_body_parses_or_is_refused(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300), p in 0usize..4) {
            let _ = parse(super::super::PROVIDERS[p], &body, &phones(), 0);
        }
    }
}
