//! The real binary: configuration errors, embedded-mode first start, and SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use support::{TempDir, eventually, free_port, send, try_send};

const BIN: &str = env!("CARGO_BIN_EXE_linkgate");

#[test]
fn a_bad_setting_exits_non_zero_with_one_line_naming_it() {
    for (var, value) in [
        ("LINKGATE_LISTEN", "not-an-address"),
        ("LINKGATE_PUBLIC_BASE_URL", "javascript:alert(1)"),
        ("LINKGATE_CLICK_SECRET", "short"),
    ] {
        let out = Command::new(BIN)
            .arg("serve")
            .env(var, value)
            .env("LINKGATE_DATA_DIR", &TempDir::new().0)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}

#[tokio::test]
async fn embedded_first_start_writes_an_admin_key_and_sigterm_stops_cleanly() {
    let dir = TempDir::new();
    let port = free_port();
    let child = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("LINKGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("LINKGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("LINKGATE_DATA_DIR", &dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(Duration::from_secs(10), "the binary answering /healthz", || async {
        // `try_send`: a connection the starting process drops is "not yet", not a failure.
        let r = try_send(addr, "GET", "/healthz", &[], vec![]).await;
        r.is_some_and(|r| r.status == StatusCode::OK).then_some(())
    })
    .await;
    let key = std::fs::read_to_string(dir.0.join("admin.key"))
        .unwrap()
        .trim()
        .to_string();
    assert!(key.len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.0.join("admin.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key file is private");
    }
    let auth = format!("Bearer {key}");
    let r = send(
        addr,
        "POST",
        "/v1/links",
        &[("authorization", &auth)],
        br#"{"destination":"https://a.example/","code":"bin-test"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        send(addr, "GET", "/bin-test", &[], vec![]).await.status,
        StatusCode::FOUND
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output().unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit {:?}", status.0);
    assert!(!status.1.contains(&key), "the key is never logged");
}
