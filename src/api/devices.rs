//! The session-control fields shared by `SessionService` and
//! `UserSessionService`: a `Device`, page sizes and tokens, a session's own
//! timeouts, and `SessionSummary` answers. Checks name the field at fault.

use std::net::IpAddr;

use super::convert::timestamp;
use super::error::invalid;
use crate::pb;
use crate::session::{Page, SessionSummary};
use crate::store::{Device, Timeouts};
use tonic::Status;

/// Longest user agent kept, bytes.
pub const MAX_USER_AGENT_BYTES: usize = 512;
/// Longest device label, characters.
pub const MAX_LABEL_CHARS: usize = 128;

/// Sessions per ListSessions page when the request says 0, and at most.
pub const SESSIONS_PAGE: (usize, usize) = (50, 500);
/// Handles per GetAllSessionHandlesForUser page when the request says 0,
/// and at most: 10 000 handles are about 380 kB, far below the 4 MiB that
/// gRPC clients accept by default.
pub const HANDLES_PAGE: (usize, usize) = (10_000, 10_000);

/// The checked `Device` of a request (`field` names it); none is empty.
pub fn device(field: &str, d: Option<pb::Device>) -> Result<Device, Status> {
    let Some(d) = d else {
        return Ok(Device::default());
    };
    if !d.ip_address.is_empty() && d.ip_address.parse::<IpAddr>().is_err() {
        return Err(invalid(
            &format!("{field}.ip_address"),
            "must be an IPv4 or IPv6 address (such as 203.0.113.7 or 2001:db8::1)",
        ));
    }
    if d.user_agent.len() > MAX_USER_AGENT_BYTES {
        return Err(invalid(
            &format!("{field}.user_agent"),
            &format!("must be at most {MAX_USER_AGENT_BYTES} bytes"),
        ));
    }
    if d.label.chars().count() > MAX_LABEL_CHARS {
        return Err(invalid(
            &format!("{field}.label"),
            &format!("must be at most {MAX_LABEL_CHARS} characters"),
        ));
    }
    for (name, text) in [("user_agent", &d.user_agent), ("label", &d.label)] {
        if text.chars().any(char::is_control) {
            return Err(invalid(
                &format!("{field}.{name}"),
                "must not hold control characters",
            ));
        }
    }
    Ok(Device {
        ip_address: d.ip_address,
        user_agent: d.user_agent,
        label: d.label,
    })
}

/// The page a request asks for: `size` 0 is `sizes.0`, more than `sizes.1`
/// is `sizes.1`; an empty token is the first page.
pub fn page(size: u32, token: String, sizes: (usize, usize)) -> Page {
    let size = match size as usize {
        0 => sizes.0,
        n => n.min(sizes.1),
    };
    Page {
        size,
        token: (!token.is_empty()).then_some(token),
    }
}

/// A session's own timeout from `field`, ms (0: none given): positive,
/// whole milliseconds, and shorter than the server's `configured` one
/// when there is one.
fn own_timeout(
    field: &str,
    value: Option<prost_types::Duration>,
    configured: Option<u64>,
    flag: &str,
) -> Result<u64, Status> {
    let Some(d) = value else {
        return Ok(0);
    };
    if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) {
        return Err(invalid(field, "must be a positive duration"));
    }
    let ms = (d.seconds as u64)
        .saturating_mul(1000)
        .saturating_add(d.nanos as u64 / 1_000_000);
    if ms < 1000 {
        return Err(invalid(field, "must be at least 1s"));
    }
    if let Some(most) = configured
        && ms > most
    {
        return Err(invalid(
            field,
            &format!(
                "must be at most the server's {flag} ({}s): a session may only shorten it",
                most / 1000
            ),
        ));
    }
    Ok(ms)
}

/// CreateNewSession's own timeouts, against the server's `(idle, max)`.
pub fn own_timeouts(
    idle: Option<prost_types::Duration>,
    max_lifetime: Option<prost_types::Duration>,
    configured: (Option<u64>, Option<u64>),
) -> Result<Timeouts, Status> {
    Ok(Timeouts {
        idle_ms: own_timeout(
            "session_idle_timeout",
            idle,
            configured.0,
            "--session-idle-timeout",
        )?,
        max_lifetime_ms: own_timeout(
            "session_max_lifetime",
            max_lifetime,
            configured.1,
            "--session-max-lifetime",
        )?,
    })
}

/// A stored device as answered: unset when nothing is known.
pub fn pb_device(d: Device) -> Option<pb::Device> {
    (d != Device::default()).then_some(pb::Device {
        ip_address: d.ip_address,
        user_agent: d.user_agent,
        label: d.label,
    })
}

/// A listed session as answered.
pub fn summary(s: SessionSummary) -> pb::SessionSummary {
    pb::SessionSummary {
        session_handle: s.handle,
        tenant_id: s.tenant_id,
        time_created: Some(timestamp(s.created_ms)),
        expiry: Some(timestamp(s.expiry_ms)),
        last_active_time: Some(timestamp(s.last_active_ms)),
        device: pb_device(s.device),
        current: s.current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(status: &Status) -> String {
        let details = tonic_types::StatusExt::get_details_bad_request(status).unwrap();
        details.field_violations[0].field.clone()
    }

    #[test]
    fn devices_are_checked_field_by_field() {
        let ok = device(
            "device",
            Some(pb::Device {
                ip_address: "2001:db8::1".into(),
                user_agent: "Mozilla/5.0".into(),
                label: "Laptop".into(),
            }),
        )
        .unwrap();
        assert_eq!(ok.label, "Laptop");
        assert_eq!(device("device", None).unwrap(), Device::default());
        let bad = |d: pb::Device| field_of(&device("device", Some(d)).unwrap_err());
        assert_eq!(
            bad(pb::Device {
                ip_address: "999.1.1.1".into(),
                ..Default::default()
            }),
            "device.ip_address"
        );
        assert_eq!(
            bad(pb::Device {
                user_agent: "x".repeat(513),
                ..Default::default()
            }),
            "device.user_agent"
        );
        assert_eq!(
            bad(pb::Device {
                label: "é".repeat(129),
                ..Default::default()
            }),
            "device.label"
        );
        assert_eq!(
            bad(pb::Device {
                label: "a\nb".into(),
                ..Default::default()
            }),
            "device.label"
        );
    }

    #[test]
    fn own_timeouts_only_shorten_the_servers() {
        let d = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        let t = own_timeouts(d(60), d(3600), (Some(120_000), None)).unwrap();
        assert_eq!((t.idle_ms, t.max_lifetime_ms), (60_000, 3_600_000));
        let e = own_timeouts(d(600), None, (Some(120_000), None)).unwrap_err();
        assert_eq!(field_of(&e), "session_idle_timeout");
        assert!(
            e.message().contains("--session-idle-timeout"),
            "{}",
            e.message()
        );
        let e = own_timeouts(None, d(-1), (None, None)).unwrap_err();
        assert_eq!(field_of(&e), "session_max_lifetime");
        assert_eq!(
            own_timeouts(None, None, (None, None)).unwrap(),
            Timeouts::default()
        );
    }

    #[test]
    fn page_sizes_default_and_are_capped() {
        assert_eq!(page(0, String::new(), (50, 500)).size, 50);
        assert_eq!(page(7, String::new(), (50, 500)).size, 7);
        assert_eq!(page(10_000, "t".into(), (50, 500)).size, 500);
        assert_eq!(page(1, "t".into(), (50, 500)).token.as_deref(), Some("t"));
    }
}
