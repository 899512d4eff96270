//! `/metrics` on the admin listener, scraped over HTTP after known traffic.

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::{Backend, Env, TestServer, eventually, sample, send};

#[tokio::test]
async fn metrics_count_known_traffic() {
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start(&env).await;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    tokio::spawn(linkgate::serve_admin(admin, s.app.clone(), std::future::pending()));

    let r = s
        .api(
            "POST",
            "/v1/links",
            Some(json!({"destination": "https://a.example/", "code": "metered"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    for _ in 0..3 {
        assert_eq!(
            s.get_ua("/metered", "Mozilla/5.0 (iPhone)").await.status,
            StatusCode::FOUND
        );
    }
    for _ in 0..2 {
        assert_eq!(s.get("/no-such-code").await.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(s.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(
        s.api("GET", "/v1/links/missing1", None).await.status,
        StatusCode::NOT_FOUND
    );

    let text = eventually(Duration::from_secs(5), "3 click events written", || async {
        let r = send(admin_addr, "GET", "/metrics", &[], vec![]).await;
        let text = r.text();
        (sample(&text, "linkgate_events_written_total{sink=\"log\",type=\"click\"}") == Some(3.0)).then_some(text)
    })
    .await;
    let expect = [
        ("linkgate_requests_total{route=\"redirect\",status=\"3xx\"}", 3.0),
        ("linkgate_requests_total{route=\"redirect\",status=\"4xx\"}", 2.0),
        ("linkgate_requests_total{route=\"probe\",status=\"2xx\"}", 1.0),
        ("linkgate_requests_total{route=\"api\",status=\"2xx\"}", 1.0),
        ("linkgate_requests_total{route=\"api\",status=\"4xx\"}", 1.0),
        ("linkgate_redirect_duration_seconds_count", 5.0),
        ("linkgate_cache_lookups_total{result=\"hit\"}", 3.0),
        ("linkgate_cache_lookups_total{result=\"miss\"}", 1.0),
        ("linkgate_cache_lookups_total{result=\"negative_hit\"}", 1.0),
        ("linkgate_store_reads_total", 1.0),
        ("linkgate_cache_links", 1.0),
        ("linkgate_event_queue_capacity", 65536.0),
        ("linkgate_event_overflow_total", 0.0),
        ("linkgate_spool_bytes", 0.0),
        ("linkgate_leads_opened_total", 0.0),
    ];
    for (name, want) in expect {
        assert_eq!(sample(&text, name), Some(want), "{name}\n{text}");
    }
    // Bucket bounds print as written (`0.000005`), not as binary-float noise
    // (`0.0000049999999999999996`), so dashboards can name a bucket.
    assert!(
        text.contains("linkgate_redirect_duration_seconds_bucket{le=\"0.000005\"}"),
        "{text}"
    );
    for le in text.split("le=\"").skip(1).filter_map(|rest| rest.split('"').next()) {
        assert!(
            le == "+Inf" || le.len() <= 8,
            "bucket bound `{le}` is not printed exactly"
        );
    }
    // Every metric the Grafana dashboard (k8s/) queries is exposed: a renamed metric would leave a
    // panel silently empty.
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/grafana-dashboard.yaml")).unwrap();
    let mut queried: Vec<&str> = dashboard
        .match_indices("linkgate_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            &rest[..rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len())]
        })
        .collect();
    queried.sort_unstable();
    queried.dedup();
    assert!(queried.len() >= 5, "read the dashboard's metrics: {queried:?}");
    for name in queried {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {name}, which /metrics does not expose"
        );
    }
    let inf = sample(&text, "linkgate_redirect_duration_seconds_bucket{le=\"+Inf\"}");
    assert_eq!(inf, Some(5.0));
    assert!(!text.contains("metered"), "no code ever appears in a label");
    let r = send(admin_addr, "GET", "/nothing", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
