//! Unit tests of the configuration: parsing, defaults, validation.

use super::*;
use http::HeaderValue;
use std::collections::HashMap;

fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn defaults_match_the_documented_values() {
    let c = config(&[]).unwrap();
    assert_eq!(c.port, 3001);
    assert_eq!(c.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(c.client_origins.to_string(), "http://localhost:5173");
    assert_eq!(c.session_idle_timeout, Duration::from_secs(1800));
    assert_eq!(c.session_member_timeout, Duration::from_secs(7200));
    assert_eq!(c.max_payload_bytes, 20_971_520);
    assert_eq!(c.original_content, OriginalContent::Echo);
    assert!(c.redis_url.is_none());
    assert!(!c.debug);
    assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(config(&[("METRICS_ADDR", "off")]).unwrap().metrics_addr, None);
    assert_eq!(c.max_connections_per_ip, 500);
    assert_eq!(c.idle_connection_timeout, Duration::from_secs(30));
    assert_eq!(
        (c.body_min_rate, c.body_rate_window),
        (2048, Duration::from_secs(20))
    );
}

#[test]
fn a_bad_value_names_the_variable() {
    for (name, value) in [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("DEBUG", "maybe"),
        ("CLIENT_URL", "localhost:5173"),
        ("SESSION_IDLE_TIMEOUT_SECS", "0"),
        ("MAX_PAYLOAD_BYTES", "-1"),
        ("ORIGINAL_CONTENT", "keep"),
        ("LOG_FORMAT", "xml"),
        ("HOST", "not-an-ip"),
        ("MAX_GROUP_MEMBERS", "1"),
        ("TRUST_PROXY", "bad header"),
        ("SEND_RATE_PER_SOCKET", "fast"),
        ("MAX_CONNECTIONS", "0"),
        ("METRICS_ADDR", "9464"),
        ("MAX_CONNECTIONS_PER_IP", "-1"),
        ("IDLE_CONNECTION_TIMEOUT_SECS", "0"),
        ("BODY_MIN_RATE_BYTES_PER_SEC", "fast"),
        ("BODY_RATE_WINDOW_SECS", "0"),
    ] {
        let err = config(&[(name, value)]).unwrap_err();
        assert_eq!(err.name, name);
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn client_url_takes_a_list_or_a_wildcard() {
    let c = config(&[("CLIENT_URL", "https://a.example, https://b.example/")]).unwrap();
    assert!(c
        .client_origins
        .allows(&HeaderValue::from_static("https://b.example")));
    assert!(!c
        .client_origins
        .allows(&HeaderValue::from_static("https://c.example")));
    let c = config(&[("CLIENT_URL", "*")]).unwrap();
    assert_eq!(c.client_origins, AllowedOrigins::Any);
}

#[test]
fn the_summary_masks_the_redis_password() {
    let c = config(&[("REDIS_URL", "redis://app:s3cret@redis:6379/0")]).unwrap();
    let summary = c.summary();
    assert!(
        summary.contains("REDIS_URL=redis://app:***@redis:6379/0"),
        "{summary}"
    );
    assert!(!summary.contains("s3cret"));
}

#[test]
fn a_redis_ca_file_is_a_path_shown_in_the_summary() {
    let c = config(&[
        ("REDIS_URL", "rediss://redis:6380"),
        ("REDIS_TLS_CA_FILE", " /etc/redis-ca.pem "),
    ])
    .unwrap();
    assert_eq!(c.redis_tls_ca_file, Some(PathBuf::from("/etc/redis-ca.pem")));
    assert!(c.summary().contains("REDIS_TLS_CA_FILE=/etc/redis-ca.pem"));
    assert_eq!(config(&[]).unwrap().redis_tls_ca_file, None);
}

#[test]
fn debug_accepts_the_usual_spellings() {
    assert!(config(&[("DEBUG", "true")]).unwrap().debug);
    assert!(config(&[("DEBUG", "TRUE")]).unwrap().debug);
    assert!(!config(&[("DEBUG", "false")]).unwrap().debug);
}

#[test]
fn every_setting_is_documented_with_its_default() {
    let readme = include_str!("../../README.md");
    let example = include_str!("../../.env.example");
    for s in SETTINGS {
        let default = if s.default.is_empty() { "unset" } else { s.default };
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", s.name)))
            .unwrap_or_else(|| panic!("README has no row for {}", s.name));
        assert!(
            row.contains(&format!("| `{default}` |")) || row.contains(&format!("| {default} |")),
            "README's default of {} is not {default}: {row}",
            s.name
        );
        let line = example
            .lines()
            .find(|l| l.trim_start_matches("# ").starts_with(&format!("{}=", s.name)))
            .unwrap_or_else(|| panic!(".env.example has no line for {}", s.name));
        assert_eq!(line.trim_start_matches("# "), format!("{}={}", s.name, s.default));
    }
    assert!(help_text().lines().filter(|l| l.contains("default: ")).count() == SETTINGS.len());
}

#[test]
fn the_default_config_is_the_documented_one() {
    let c = Config::default();
    assert_eq!((c.host, c.port), (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3001));
    assert_eq!(c.shutdown_drain, Duration::from_secs(1));
    let local = Config::local();
    assert_eq!((local.host, local.port), (IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
    assert_eq!(local.max_sessions, c.max_sessions);
}
