//! Formatting shared by the subcommands' output: times as RFC 3339, for
//! tables and for JSON.
//!
//! This file only formats values; it must never print.

/// RFC 3339 (UTC, seconds) from a protobuf timestamp, `-` when it is unset
/// (for tables).
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(|| "-".to_owned(), |ts| rfc3339_secs(ts.seconds))
}

/// RFC 3339 from a protobuf timestamp for JSON output: `null` when unset.
pub(super) fn json_time(ts: Option<&prost_types::Timestamp>) -> serde_json::Value {
    ts.map_or(serde_json::Value::Null, |ts| {
        rfc3339_secs(ts.seconds).into()
    })
}

/// RFC 3339 (UTC, seconds) from seconds since the epoch.
pub(super) fn rfc3339_secs(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let at = |seconds| rfc3339(Some(&prost_types::Timestamp { seconds, nanos: 0 }));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_377_429), "2026-11-22T19:57:09Z");
        assert_eq!(rfc3339(None), "-");
        assert_eq!(json_time(None), serde_json::Value::Null);
        assert_eq!(rfc3339_secs(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(
            json_time(Some(&prost_types::Timestamp {
                seconds: 0,
                nanos: 0
            })),
            "1970-01-01T00:00:00Z"
        );
    }
}
