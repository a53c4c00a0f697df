//! Resolution of whole configurations: defaults, precedence, and errors
//! that name the setting as it was given.

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;

use super::*;

fn resolve(f: impl FnOnce(&mut ServeArgs)) -> Result<Config, ConfigError> {
    let mut args = ServeArgs::default();
    f(&mut args);
    Config::resolve(&args)
}

#[test]
fn defaults_resolve() {
    let c = resolve(|_| {}).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(c.access_token_lifetime, Duration::from_secs(3600));
    assert_eq!(c.refresh_token_lifetime, Duration::from_secs(100 * 86400));
    assert_eq!(c.refresh_grace_period, Duration::from_secs(30));
}

#[test]
fn errors_name_the_setting() {
    let e = resolve(|a| a.access_token_lifetime = Some("soon".into())).unwrap_err();
    assert_eq!(e.setting, "access-token-lifetime");
    let e = resolve(|a| a.refresh_grace_period = Some("10m".into())).unwrap_err();
    assert_eq!(e.setting, "refresh-grace-period");
    let e = resolve(|a| a.signing_algorithm = Some("HS256".into())).unwrap_err();
    assert_eq!(e.setting, "signing-algorithm");
    let e = resolve(|a| a.listen = Some("0.0.0.0:50051".into())).unwrap_err();
    assert_eq!(e.setting, "api-key");
    let e = resolve(|a| a.issuer = Some("ftp://x".into())).unwrap_err();
    assert_eq!(e.setting, "issuer");
    let e = resolve(|a| a.api_keys = vec!["short".into()]).unwrap_err();
    assert_eq!(e.setting, "api-key");
    let e = resolve(|a| a.claim_providers = vec!["st-role".into()]).unwrap_err();
    assert_eq!(e.setting, "claim-provider");
    let e = resolve(|a| a.default_claim_provider = Some("https://x".into())).unwrap_err();
    assert_eq!(e.setting, "default-claim-provider");
    let e = resolve(|a| a.store_cache_size = Some("64KiB".into())).unwrap_err();
    assert_eq!(e.setting, "store-cache-size");
    let c = resolve(|a| a.store_cache_size = Some("256MiB".into())).unwrap();
    assert_eq!(c.store_cache_bytes, 256 << 20);
    assert_eq!(c.store_reserved_bytes, 64 << 20, "the default reserve");
    let c = resolve(|a| a.store_reserved_space = Some("0".into())).unwrap();
    assert_eq!(c.store_reserved_bytes, 0);
    let e = resolve(|a| a.store_reserved_space = Some("2TiB".into())).unwrap_err();
    assert_eq!(e.setting, "store-reserved-space");
    assert_eq!(c.log_archive_bytes, 1 << 30, "the default archive");
    let c = resolve(|a| a.log_archive_size = Some("0".into())).unwrap();
    assert_eq!(c.log_archive_bytes, 0);
}

/// Arguments parsed as the binary parses them, with their sources.
fn parsed(argv: &[&str]) -> ServeArgs {
    use clap::{CommandFactory, FromArgMatches};
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let argv = std::iter::once("sessiond").chain(argv.iter().copied());
    let matches = Cli::command().try_get_matches_from(argv).unwrap();
    let cli = Cli::from_arg_matches(&matches).unwrap();
    cli.serve.with_sources(&matches)
}

#[test]
fn errors_name_the_flag_the_variable_or_the_file_key_that_was_set() {
    let e = Config::resolve(&parsed(&["--access-token-lifetime", "15"])).unwrap_err();
    assert_eq!(e.origin, Origin::Flag("--access-token-lifetime".into()));
    assert_eq!(
        e.to_string(),
        "invalid setting --access-token-lifetime: `15` is not a duration like 30s, 15m, 1h or 100d"
    );

    let from_env = ServeArgs {
        access_token_lifetime: Some("15".into()),
        sources: Sources::of(&[("access_token_lifetime", ValueSource::EnvVariable)]),
        ..Default::default()
    };
    let e = Config::resolve(&from_env).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid setting SESSIOND_ACCESS_TOKEN_LIFETIME: `15`"),
        "{e}"
    );
    assert!(!e.to_string().contains("access-token-lifetime"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessiond.toml");
    std::fs::write(&path, "access_token_lifetime = \"15\"\n").unwrap();
    let config = path.to_str().unwrap();
    let e = Config::resolve(&parsed(&["--config", config])).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "invalid setting access_token_lifetime in {config}: `15` is not a duration like 30s, 15m, 1h or 100d"
        )
    );
    // A flag wins over the file, and is what a bad value is blamed on.
    let e = Config::resolve(&parsed(&[
        "--config",
        config,
        "--access-token-lifetime",
        "0s",
    ]))
    .unwrap_err();
    assert_eq!(e.origin, Origin::Flag("--access-token-lifetime".into()));

    // Settings with another name on the command line than their field,
    // and lists from a variable.
    let e = Config::resolve(&parsed(&["--api-key", "short"])).unwrap_err();
    assert_eq!(e.origin, Origin::Flag("--api-key".into()));
    let keys_from_env = ServeArgs {
        api_keys: vec!["short".into()],
        sources: Sources::of(&[("api_keys", ValueSource::EnvVariable)]),
        ..Default::default()
    };
    let e = Config::resolve(&keys_from_env).unwrap_err();
    assert_eq!(e.origin, Origin::Env("SESSIOND_API_KEYS".into()));
    std::fs::write(&path, "[client_secrets]\nacme = \"short\"\n").unwrap();
    let e = Config::resolve(&parsed(&["--config", config])).unwrap_err();
    assert_eq!(e.setting, "client-secret");
    assert_eq!(
        e.origin,
        Origin::File {
            key: "client_secrets".into(),
            path: path.clone()
        }
    );

    // A setting nobody set, blamed for a conflict with one that was set:
    // named by its flag and its variable.
    std::fs::write(&path, "refresh_token_lifetime = \"30m\"\n").unwrap();
    let e = Config::resolve(&parsed(&["--config", config])).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "invalid setting --access-token-lifetime (SESSIOND_ACCESS_TOKEN_LIFETIME): "
        ),
        "{e}"
    );

    // The file itself: named as --config was given.
    let missing = dir.path().join("none.toml");
    let e = Config::resolve(&parsed(&["--config", missing.to_str().unwrap()])).unwrap_err();
    assert_eq!(e.origin, Origin::Flag("--config".into()));

    // A key-encryption key read from the file a flag names.
    let kek = dir.path().join("kek");
    std::fs::write(&kek, "0102").unwrap();
    let e = Config::resolve(&parsed(&[
        "--key-encryption-key-file",
        kek.to_str().unwrap(),
    ]))
    .unwrap_err();
    assert_eq!(e.setting, "key-encryption-key");
    assert_eq!(e.origin, Origin::Flag("--key-encryption-key-file".into()));
}

#[test]
fn a_previous_kek_needs_a_current_one_and_must_parse() {
    let dir = tempfile::tempdir().unwrap();
    let (key, short) = (dir.path().join("kek"), dir.path().join("short"));
    std::fs::write(&key, "01".repeat(32)).unwrap();
    std::fs::write(&short, "0102").unwrap();
    let e = resolve(|a| a.previous_key_encryption_key_file = Some(key.clone())).unwrap_err();
    assert_eq!(e.setting, "previous-key-encryption-key");
    assert!(e.to_string().contains("needs"), "{e}");
    let both = |previous: &PathBuf| {
        let previous = previous.clone();
        let key = key.clone();
        move |a: &mut ServeArgs| {
            a.key_encryption_key_file = Some(key);
            a.previous_key_encryption_key_file = Some(previous);
        }
    };
    let e = resolve(both(&short)).unwrap_err();
    assert_eq!(e.setting, "previous-key-encryption-key");
    let c = resolve(both(&key)).unwrap();
    // Both keys resolve into one, which opens what either sealed.
    assert!(
        c.key_encryption_key
            .as_ref()
            .is_some_and(|k| k.has_previous())
    );
    let e = resolve(|a| a.previous_key_encryption_key_file = Some(dir.path().join("none")))
        .unwrap_err();
    assert_eq!(e.setting, "previous-key-encryption-key-file", "unreadable");
}

#[test]
fn a_key_allows_a_public_listen_address() {
    let public = |a: &mut ServeArgs| {
        a.listen = Some("0.0.0.0:50051".into());
        a.api_keys = vec!["0123456789abcdef0123".into()];
    };
    let e = resolve(public).unwrap_err();
    assert_eq!(e.setting, "issuer", "a wildcard address is no issuer");
    let c = resolve(|a| {
        public(a);
        a.issuer = Some("https://auth.example.com/".into());
    })
    .unwrap();
    assert_eq!(c.issuer.as_deref(), Some("https://auth.example.com"));
    assert_eq!(c.api_keys.len(), 1);
    assert!(!format!("{c:?}").contains("0123456789abcdef0123"));
}

#[test]
fn api_keys_with_names_scopes_and_hashes() {
    let plain = ApiKey::parse("0123456789abcdef0123", 0).unwrap();
    assert_eq!((plain.name.as_str(), plain.scope), ("key-1", Scope::Admin));
    let scoped = ApiKey::parse("sidecar:verify:0123456789abcdef0123", 1).unwrap();
    assert_eq!(
        (scoped.name.as_str(), scoped.scope),
        ("sidecar", Scope::Verify)
    );
    let hashed = ApiKey::parse(&format!("ci:backend:sha256:{}", "ab".repeat(32)), 2).unwrap();
    assert_eq!(hashed.secret, KeySecret::Sha256([0xab; 32]));
    // A colon in a plain key that does not name a scope is part of the key.
    let colons = ApiKey::parse("a:b:0123456789abcdef", 3).unwrap();
    assert_eq!(
        (colons.name.as_str(), colons.scope),
        ("key-4", Scope::Admin)
    );
    assert!(ApiKey::parse("x:admin:sha256:abc", 0).is_err());
    assert!(ApiKey::parse("x:admin:short", 0).is_err());
    let e = resolve(|a| {
        a.api_keys = vec![
            "k:admin:0123456789abcdef".into(),
            "k:verify:0123456789abcdeg".into(),
        ]
    })
    .unwrap_err();
    assert_eq!(e.setting, "api-key");
    assert!(e.message.contains("two API keys"), "{e}");
}

#[test]
fn file_values_apply_under_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessiond.toml");
    std::fs::write(
        &path,
        "access_token_lifetime = \"15m\"\nrefresh_grace_period = \"5s\"\nmax_payload_size = 4096\n",
    )
    .unwrap();
    let c = resolve(|a| {
        a.config = Some(path.clone());
        a.refresh_grace_period = Some("10s".into());
    })
    .unwrap();
    assert_eq!(c.access_token_lifetime, Duration::from_secs(900));
    assert_eq!(c.refresh_grace_period, Duration::from_secs(10));
    assert_eq!(c.max_payload_bytes, 4096);

    std::fs::write(&path, "acess_token_lifetime = \"15m\"\n").unwrap();
    let e = resolve(|a| a.config = Some(path.clone())).unwrap_err();
    assert_eq!(e.setting, "config");
    assert!(e.message.contains("acess_token_lifetime"), "{e}");
}

#[test]
fn a_database_url_and_pool_size_are_read_and_its_password_never_shown() {
    let c = resolve(|_| {}).unwrap();
    assert!(c.database_url.is_none(), "the embedded store by default");
    assert_eq!(c.database_pool_size, 16);

    let url = "postgres://sessiond:hunter2@db:5432/sessions?sslmode=require";
    let args = parsed(&["--database-url", url, "--database-pool-size", "4"]);
    assert!(!format!("{args:?}").contains("hunter2"));
    let c = Config::resolve(&args).unwrap();
    assert_eq!(c.database_url.as_ref().map(Secret::expose), Some(url));
    assert_eq!(c.database_pool_size, 4);
    assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");

    for bad_url in [
        "mysql://sessiond:hunter2@db/sessions",
        "postgres://sessiond:hunter2@db/sessions?sslmode=sometimes",
        "postgres://sessiond:hunter2@db:port/sessions",
    ] {
        let e = Config::resolve(&parsed(&["--database-url", bad_url])).unwrap_err();
        assert_eq!(e.setting, "database-url");
        assert_eq!(e.origin, Origin::Flag("--database-url".into()));
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    for size in ["0", "1001", "many"] {
        let e = resolve(|a| a.database_pool_size = Some(size.into())).unwrap_err();
        assert_eq!(e.setting, "database-pool-size", "{size}");
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessiond.toml");
    std::fs::write(
        &path,
        "database_url = \"postgresql://u:hunter2@db/s\"\ndatabase_pool_size = 32\n",
    )
    .unwrap();
    let c = resolve(|a| a.config = Some(path.clone())).unwrap();
    assert_eq!(
        c.database_url.as_ref().map(Secret::expose),
        Some("postgresql://u:hunter2@db/s")
    );
    assert_eq!(c.database_pool_size, 32);
}

#[test]
fn the_session_max_lifetime_is_off_or_within_bounds() {
    assert!(resolve(|_| {}).unwrap().session_max_lifetime.is_zero());
    let c = resolve(|a| a.session_max_lifetime = Some("12h".into())).unwrap();
    assert_eq!(c.session_max_lifetime, Duration::from_secs(12 * 3600));
    for bad in ["30s", "soon", "4000d"] {
        let e = resolve(|a| a.session_max_lifetime = Some(bad.into())).unwrap_err();
        assert_eq!(e.setting, "session-max-lifetime", "{bad}");
    }
}

#[test]
fn gateway_check_settings_are_checked_and_header_names_lowercased() {
    let c = resolve(|a| {
        a.authz_cookie_name = Some("sid".into());
        a.authz_claim_headers = vec!["st-role=X-User-Roles".into(), "email=x-email".into()];
    })
    .unwrap();
    assert_eq!(c.authz_cookie_name, "sid");
    assert_eq!(
        c.authz_claim_headers,
        [
            ("st-role".to_owned(), "x-user-roles".to_owned()),
            ("email".to_owned(), "x-email".to_owned())
        ]
    );
    assert_eq!(resolve(|_| {}).unwrap().authz_cookie_name, "sAccessToken");
    for bad in [
        vec!["st-role"],
        vec!["=x-role"],
        vec!["st-role=x role"],
        vec!["st-role=x-user-id"],
        vec!["a=x-same", "b=X-Same"],
    ] {
        let e = resolve(|a| a.authz_claim_headers = bad.iter().map(|s| s.to_string()).collect())
            .unwrap_err();
        assert_eq!(e.setting, "authz-claim-header", "{bad:?}");
    }
    let e = resolve(|a| a.authz_cookie_name = Some("s id;".into())).unwrap_err();
    assert_eq!(e.setting, "authz-cookie-name");
}
