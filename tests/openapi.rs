//! The OpenAPI document stays true: it is served without a key, its paths are exactly the API's
//! routes (read from the router's source), and real answers of every operation match the schemas
//! it gives them.

mod support;

use std::collections::BTreeSet;

use http::StatusCode;
use serde_json::{Value, json};
use support::{Backend, Env, TestServer, send};

fn document() -> Value {
    serde_json::from_str(include_str!("../src/api/openapi.json")).expect("the document is JSON")
}

/// `(METHOD, /v1/path/{})` for every route the API's `dispatch` matches, parameters as `{}`.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let src = include_str!("../src/api/mod.rs");
    let mut out = BTreeSet::new();
    for line in src.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("(&Method::") else {
            continue;
        };
        let Some((method, rest)) = rest.split_once(", [") else {
            continue;
        };
        let Some((segments, _)) = rest.split_once("])") else {
            continue;
        };
        let path: Vec<String> = segments
            .split(", ")
            .map(|s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                Some(literal) => literal.to_string(),
                None => "{}".to_string(),
            })
            .collect();
        out.insert((method.to_string(), format!("/v1/{}", path.join("/"))));
    }
    if src.contains("req.uri().path() == \"/v1/openapi.json\"") {
        out.insert(("GET".into(), "/v1/openapi.json".into()));
    }
    if src.contains("strip_prefix(\"/v1/receipts/\")") {
        out.insert(("POST".into(), "/v1/receipts/{}".into()));
    }
    out
}

fn routes_in_document(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let mut template = String::new();
        let mut in_param = false;
        for c in path.chars() {
            match c {
                '{' => {
                    in_param = true;
                    template.push_str("{}");
                }
                '}' => in_param = false,
                c if !in_param => template.push(c),
                _ => {}
            }
        }
        for method in ops.as_object().unwrap().keys() {
            out.insert((method.to_uppercase(), template.clone()));
        }
    }
    out
}

#[test]
fn the_document_names_exactly_the_routes_the_api_serves() {
    let source = routes_in_source();
    assert!(source.len() >= 19, "the router's routes were read: {source:?}");
    let doc = routes_in_document(&document());
    let missing: Vec<_> = source.difference(&doc).collect();
    let extra: Vec<_> = doc.difference(&source).collect();
    assert!(missing.is_empty(), "routes the document lacks: {missing:?}");
    assert!(extra.is_empty(), "documented routes the API does not serve: {extra:?}");
}

#[test]
fn every_operation_names_its_scope_and_its_error_answers() {
    let doc = document();
    let scopes = [
        "links:write",
        "links:read",
        "conversions:write",
        "commissions:write",
        "stats:read",
        "webhooks:write",
        "admin",
    ];
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let security = op["security"].as_array().unwrap();
            if path == "/v1/openapi.json" {
                assert!(security.is_empty(), "the document itself is public");
                continue;
            }
            if path.starts_with("/v1/receipts/") {
                assert!(
                    security[0]["receiptToken"].is_array(),
                    "receipts carry their token in the URL"
                );
                assert!(op["responses"]["401"].is_object() && op["responses"]["503"].is_object());
                continue;
            }
            let scope = security[0]["bearer"][0].as_str().unwrap_or_default();
            assert!(scopes.contains(&scope), "{method} {path}: scope {scope:?}");
            for status in ["401", "403", "503"] {
                assert!(op["responses"][status].is_object(), "{method} {path} lacks {status}");
            }
        }
    }
}

/// Checks `v` against `schema` (the subset the document uses: `$ref`, `type` (one or several),
/// `required`, `properties`, `items`, `enum`), naming the first mismatch.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        return check(doc, &doc["components"]["schemas"][name], v, at);
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed = types.is_empty() || types.contains(&kind) || (kind == "integer" && types.contains(&"number"));
    if !allowed {
        return Err(format!("{at}: {kind} where the document says {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        return Err(format!("{at}: {v} is not one of {allowed:?}"));
    }
    if let Value::Object(map) = v {
        for field in schema["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap();
            if !map.contains_key(field) {
                return Err(format!("{at}: required field `{field}` missing"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (k, sub) in props {
                if let Some(x) = map.get(k) {
                    check(doc, sub, x, &format!("{at}.{k}"))?;
                }
            }
        }
    }
    if let (Value::Array(items), Some(sub)) = (v, schema.get("items")) {
        for (i, x) in items.iter().enumerate() {
            check(doc, sub, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Checks a real answer against what the document says `method path` answers with that status.
fn conforms(doc: &Value, method: &str, path: &str, status: StatusCode, body: &Value) {
    let answer = &doc["paths"][path][method]["responses"][status.as_str()];
    assert!(
        answer.is_object(),
        "{method} {path} answered {status}, which the document does not list"
    );
    let schema = &answer["content"]["application/json"]["schema"];
    if let Err(e) = check(doc, schema, body, "body") {
        panic!("{method} {path} {status}: {e}\n{body}");
    }
}

#[tokio::test]
async fn real_answers_match_their_documented_schemas() {
    let doc = document();
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start(&env).await;

    let served = send(s.addr, "GET", "/v1/openapi.json", &[], Vec::new()).await;
    assert_eq!(served.status, StatusCode::OK, "served without a key");
    assert_eq!(served.header("content-type"), Some("application/json"));
    assert_eq!(served.json(), doc);
    assert_eq!(doc["openapi"], "3.1.0");

    let mut calls: Vec<(&str, &str, String, Option<Value>)> = vec![
        (
            "post",
            "/v1/partners",
            "/v1/partners".into(),
            Some(json!({"id": "mgr", "name": "M"})),
        ),
        (
            "post",
            "/v1/partners",
            "/v1/partners".into(),
            Some(json!({"id": "kid", "parent_id": "mgr"})),
        ),
        ("get", "/v1/partners/{id}", "/v1/partners/kid".into(), None),
        (
            "post",
            "/v1/campaigns",
            "/v1/campaigns".into(),
            Some(json!({"id": "c1", "commission_bps": [500, 200]})),
        ),
        ("get", "/v1/campaigns/{id}", "/v1/campaigns/c1".into(), None),
        (
            "post",
            "/v1/links",
            "/v1/links".into(),
            Some(
                json!({"destination": "https://a.example/x", "code": "doc123", "campaign_id": "c1", "owner_id": "kid", "recipient_id": "r1", "metadata": {"a": 1}}),
            ),
        ),
        (
            "post",
            "/v1/links/bulk",
            "/v1/links/bulk".into(),
            Some(
                json!({"defaults": {"destination": "https://a.example/", "campaign_id": "c1"}, "links": [{"recipient_id": "r2"}]}),
            ),
        ),
        ("get", "/v1/links", "/v1/links?campaign_id=c1".into(), None),
        ("get", "/v1/links/{code}", "/v1/links/doc123".into(), None),
        (
            "patch",
            "/v1/links/{code}",
            "/v1/links/doc123".into(),
            Some(json!({"tags": ["x"]})),
        ),
        ("get", "/v1/links/{code}/stats", "/v1/links/doc123/stats".into(), None),
        ("get", "/v1/links/{code}", "/v1/links/nosuch".into(), None),
        (
            "post",
            "/v1/links",
            "/v1/links".into(),
            Some(json!({"destination": "javascript:alert(1)"})),
        ),
        (
            "post",
            "/v1/links",
            "/v1/links".into(),
            Some(json!({"destination": "https://a.example/", "code": "doc123"})),
        ),
    ];
    for (method, path, uri, body) in calls.drain(..) {
        let r = s.api(&method.to_uppercase(), &uri, body).await;
        conforms(&doc, method, path, r.status, &r.json());
    }
    // A tap opens the lead; an order is attributed.
    assert_eq!(
        s.get_ua("/doc123", "Mozilla/5.0 (iPhone)").await.status,
        StatusCode::FOUND
    );
    let leads = support::eventually(std::time::Duration::from_secs(5), "the lead", || async {
        let r = s.api("GET", "/v1/leads?campaign_id=c1", None).await;
        let v = r.json();
        (v["leads"].as_array().is_some_and(|l| !l.is_empty())).then_some((r.status, v))
    })
    .await;
    conforms(&doc, "get", "/v1/leads", leads.0, &leads.1);
    let lead_id = leads.1["leads"][0]["lead_id"].as_str().unwrap().to_string();
    for (method, path, uri, body) in [
        ("get", "/v1/leads/{id}", format!("/v1/leads/{lead_id}"), None),
        (
            "post",
            "/v1/leads",
            "/v1/leads".to_string(),
            Some(json!({"click_id": "nope"})),
        ),
        (
            "post",
            "/v1/conversions",
            "/v1/conversions".to_string(),
            Some(json!({"order_id": "o1", "code": "doc123", "type": "order", "amount": 1000, "currency": "CNY"})),
        ),
        (
            "get",
            "/v1/campaigns/{id}/stats",
            "/v1/campaigns/c1/stats".to_string(),
            None,
        ),
        (
            "get",
            "/v1/campaigns/{id}/leaderboard",
            "/v1/campaigns/c1/leaderboard?by=revenue".to_string(),
            None,
        ),
        (
            "get",
            "/v1/analytics",
            "/v1/analytics?group_by=timeseries&interval=24h".to_string(),
            None,
        ),
        ("get", "/v1/analytics", "/v1/analytics?group_by=app".to_string(), None),
        (
            "get",
            "/v1/analytics",
            "/v1/analytics?group_by=colour".to_string(),
            None,
        ),
        ("get", "/v1/analytics", "/v1/analytics?code=Zz9Zz9Zz".to_string(), None),
        (
            "post",
            "/v1/sends",
            "/v1/sends".to_string(),
            Some(json!({"sends": [{"code": "doc123", "provider": "aliyun", "message_id": "m1"}]})),
        ),
        (
            "post",
            "/v1/sends",
            "/v1/sends".to_string(),
            Some(json!({"sends": [{"code": "doc123"}]})),
        ),
        (
            "get",
            "/v1/campaigns/{id}/funnel",
            "/v1/campaigns/c1/funnel".to_string(),
            None,
        ),
        (
            "get",
            "/v1/campaigns/{id}/funnel",
            "/v1/campaigns/c1/funnel?by=owner".to_string(),
            None,
        ),
    ] {
        let r = s.api(&method.to_uppercase(), &uri, body).await;
        conforms(&doc, method, path, r.status, &r.json());
    }
    let unauthorized = send(s.addr, "GET", "/v1/links/doc123", &[], Vec::new()).await;
    conforms(
        &doc,
        "get",
        "/v1/links/{code}",
        unauthorized.status,
        &unauthorized.json(),
    );
    let qr = s.api("GET", "/v1/links/doc123/qr?format=png", None).await;
    assert_eq!(
        (qr.status, qr.header("content-type")),
        (StatusCode::OK, Some("image/png"))
    );
    assert!(doc["paths"]["/v1/links/{code}/qr"]["get"]["responses"]["200"]["content"]["image/png"].is_object());
    let deleted = s.api("DELETE", "/v1/links/doc123", None).await;
    assert!(doc["paths"]["/v1/links/{code}"]["delete"]["responses"][deleted.status.as_str()].is_object());

    // Webhooks: create (the secret shown once), read, list, deliveries, a retry of nothing, bad
    // input, delete.
    let created = s
        .api(
            "POST",
            "/v1/webhooks",
            Some(json!({"url": "https://hooks.example.com/lg", "events": ["click", "lead"], "batch": 50})),
        )
        .await;
    conforms(&doc, "post", "/v1/webhooks", created.status, &created.json());
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.json()["id"].as_str().unwrap().to_string();
    for (method, path, uri, body) in [
        ("get", "/v1/webhooks", "/v1/webhooks".to_string(), None),
        ("get", "/v1/webhooks/{id}", format!("/v1/webhooks/{id}"), None),
        ("get", "/v1/webhooks/{id}", "/v1/webhooks/wh_none".to_string(), None),
        (
            "get",
            "/v1/webhooks/{id}/deliveries",
            format!("/v1/webhooks/{id}/deliveries?limit=5"),
            None,
        ),
        (
            "get",
            "/v1/webhooks/{id}/deliveries",
            format!("/v1/webhooks/{id}/deliveries?limit=0"),
            None,
        ),
        (
            "post",
            "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
            format!("/v1/webhooks/{id}/deliveries/dl_none/retry"),
            None,
        ),
        (
            "post",
            "/v1/webhooks",
            "/v1/webhooks".to_string(),
            Some(json!({"url": "http://10.0.0.1/", "events": ["tap"]})),
        ),
    ] {
        let r = s.api(&method.to_uppercase(), &uri, body).await;
        conforms(&doc, method, path, r.status, &r.json());
    }
    let deleted = s.api("DELETE", &format!("/v1/webhooks/{id}"), None).await;
    assert!(doc["paths"]["/v1/webhooks/{id}"]["delete"]["responses"][deleted.status.as_str()].is_object());
    assert!(
        doc["webhooks"]["click"]["post"]["requestBody"].is_object(),
        "deliveries are documented"
    );

    // The events webhooks post (the stream's, here the event log's) match the document's `Event`,
    // one by one and as a batch-mode array.
    let events = support::eventually(
        std::time::Duration::from_secs(5),
        "a click, a lead and a conversion",
        || async {
            let events = env.events();
            let types: BTreeSet<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
            ["click", "lead", "conversion"]
                .iter()
                .all(|t| types.contains(t))
                .then(|| events.clone())
        },
    )
    .await;
    let body =
        |name: &str| doc["webhooks"][name]["post"]["requestBody"]["content"]["application/json"]["schema"].clone();
    for name in ["click", "lead", "conversion", "commission", "refund"] {
        for e in events.iter().filter(|e| e["type"] == name) {
            if let Err(m) = check(&doc, &body(name), e, "event") {
                panic!("{name} event: {m}\n{e}");
            }
        }
    }
    if let Err(m) = check(&doc, &body("batch"), &Value::Array(events.clone()), "batch") {
        panic!("batch: {m}");
    }
}

/// A method a path does not take answers 405 with `Allow` naming exactly the methods the
/// document gives that path (RFC 9110).
#[tokio::test]
async fn a_405_names_the_documented_methods_in_allow() {
    let doc = document();
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start(&env).await;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let uri = path
            .replace("{code}", "abc123")
            .replace("{id}", "x1")
            .replace("{delivery_id}", "dl_1");
        let r = s.api("TRACE", &uri, None).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "TRACE {uri}");
        let mut allowed: Vec<String> = r
            .header("allow")
            .unwrap_or_else(|| panic!("TRACE {uri}: no Allow header"))
            .split(", ")
            .map(String::from)
            .filter(|m| m != "HEAD")
            .collect();
        allowed.sort();
        let mut documented: Vec<String> = ops.as_object().unwrap().keys().map(|m| m.to_uppercase()).collect();
        documented.sort();
        assert_eq!(allowed, documented, "{uri}");
    }
    let edge = s.api("POST", "/abc123", None).await;
    assert_eq!(edge.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(edge.header("allow"), Some("GET, HEAD"));
}
