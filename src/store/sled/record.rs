//! The stored form of a session record.
//!
//! Version 4 is a compact binary layout; the handle is the record's key
//! and is not repeated in it. Version 3 was the same layout without the
//! activity, timeouts and device (read as: last active when last rotated,
//! no timeouts of its own, no device), version 2 version 3 with the handle
//! first, and version 1 JSON with field names; all are still read.
//!
//! ```text
//! 4
//! user_id, tenant_id                       u16 length + UTF-8 each
//! created_at_ms, expires_at_ms, rotated_at_ms   u64 big-endian each
//! last_active_ms, idle_ms, max_lifetime_ms      u64 big-endian each (v4)
//! device ip_address, user_agent, label     u16 length + UTF-8 each (v4)
//! current generation                       hash, optional hash
//! previous generation                      u8 0, or u8 1 + generation
//! access_payload, data                     u32 length + JSON object each
//! ```
//!
//! A hash is `u8 1` + its 32 bytes. Records written before hashes were
//! bytes in the store model may hold `u8 0` + a u16 length + UTF-8 (a hash
//! that was not 64 lowercase hex digits); it is read as hex, and a text
//! that is not a SHA-256 is a corrupt record. An optional hash is `u8 0`
//! when absent. The fixed part comes first, so [`decode_lineage`] reads what
//! checking an access token against the store needs without parsing the
//! JSON.
//!
//! Version 1's JSON is this file's own ([`V1Session`]): the store model has
//! no serde, so renaming a field of it never changes what old data
//! directories hold.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::store::{Device, Generation, Lineage, SessionRecord, Timeouts, TokenHash};

/// Version byte of JSON records.
pub(super) const V1: u8 = 1;
/// Version byte of binary session records that hold their handle.
const V2: u8 = 2;
/// Version byte of binary session records without activity or device.
const V3: u8 = 3;
/// Version byte of binary session records.
const V4: u8 = 4;

const HASH_TEXT: u8 = 0;
const HASH_SHA256: u8 = 1;

/// A session as version 1 stored it: JSON, hashes as hex.
#[derive(Serialize, Deserialize)]
pub(super) struct V1Session {
    handle: String,
    user_id: String,
    tenant_id: String,
    access_payload: Map<String, Value>,
    data: Map<String, Value>,
    created_at_ms: u64,
    expires_at_ms: u64,
    current: V1Generation,
    previous: Option<V1Generation>,
    rotated_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct V1Generation {
    refresh_hash: String,
    anti_csrf_hash: Option<String>,
}

fn hex_hash(text: &str) -> Result<TokenHash, String> {
    TokenHash::from_hex(text).ok_or_else(|| "a stored hash is not a SHA-256".to_owned())
}

impl TryFrom<V1Generation> for Generation {
    type Error = String;
    fn try_from(g: V1Generation) -> Result<Self, String> {
        Ok(Self {
            refresh_hash: hex_hash(&g.refresh_hash)?,
            anti_csrf_hash: g.anti_csrf_hash.as_deref().map(hex_hash).transpose()?,
        })
    }
}

impl TryFrom<V1Session> for SessionRecord {
    type Error = String;
    fn try_from(r: V1Session) -> Result<Self, String> {
        Ok(Self {
            handle: r.handle,
            user_id: r.user_id,
            tenant_id: r.tenant_id,
            access_payload: r.access_payload,
            data: r.data,
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            current: r.current.try_into()?,
            previous: r.previous.map(Generation::try_from).transpose()?,
            rotated_at_ms: r.rotated_at_ms,
            last_active_ms: r.rotated_at_ms,
            timeouts: Timeouts::default(),
            device: Device::default(),
        })
    }
}

#[cfg(test)]
impl From<&SessionRecord> for V1Session {
    fn from(r: &SessionRecord) -> Self {
        let generation = |g: &Generation| V1Generation {
            refresh_hash: g.refresh_hash.to_hex(),
            anti_csrf_hash: g.anti_csrf_hash.as_ref().map(TokenHash::to_hex),
        };
        Self {
            handle: r.handle.clone(),
            user_id: r.user_id.clone(),
            tenant_id: r.tenant_id.clone(),
            access_payload: r.access_payload.clone(),
            data: r.data.clone(),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            current: generation(&r.current),
            previous: r.previous.as_ref().map(generation),
            rotated_at_ms: r.rotated_at_ms,
        }
    }
}

/// Encodes a session in the current layout.
pub(super) fn encode_session(r: &SessionRecord) -> Vec<u8> {
    let d = &r.device;
    let strings = r.user_id.len() + r.tenant_id.len() + d.ip_address.len() + d.user_agent.len();
    let mut out = Vec::with_capacity(200 + strings + d.label.len() + 2 * 64);
    out.push(V4);
    for s in [&r.user_id, &r.tenant_id] {
        push_str(&mut out, s);
    }
    for n in [
        r.created_at_ms,
        r.expires_at_ms,
        r.rotated_at_ms,
        r.last_active_ms,
        r.timeouts.idle_ms,
        r.timeouts.max_lifetime_ms,
    ] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    for s in [&d.ip_address, &d.user_agent, &d.label] {
        push_str(&mut out, s);
    }
    push_generation(&mut out, &r.current);
    match &r.previous {
        None => out.push(0),
        Some(g) => {
            out.push(1);
            push_generation(&mut out, g);
        }
    }
    for map in [&r.access_payload, &r.data] {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        // A map of JSON values always serialises.
        serde_json::to_writer(&mut out, map).expect("JSON maps serialise");
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    out
}

/// A binary record (version 2, 3 or 4): a reader at its fixed fields, and
/// the handle version 2 stores. `None` for other versions.
fn binary(bytes: &[u8]) -> Option<Result<(Reader<'_>, Option<String>), String>> {
    match bytes.split_first() {
        Some((&V4, rest)) => Some(Ok((Reader(rest, true), None))),
        Some((&V3, rest)) => Some(Ok((Reader(rest, false), None))),
        Some((&V2, rest)) => {
            let mut r = Reader(rest, false);
            let stored = r.str();
            Some(stored.map(|h| (r, Some(h))))
        }
        _ => None,
    }
}

/// Decodes the session stored under `handle` in any layout.
pub(super) fn decode_session(handle: &str, bytes: &[u8]) -> Result<SessionRecord, String> {
    let Some(binary) = binary(bytes) else {
        return match bytes.split_first() {
            Some((&V1, rest)) => serde_json::from_slice::<V1Session>(rest)
                .map_err(|e| e.to_string())?
                .try_into(),
            Some((v, _)) => Err(format!("unknown record version {v}")),
            None => Err("empty record".to_owned()),
        };
    };
    let (mut r, stored) = binary?;
    let mut record = r.fixed_part(stored.unwrap_or_else(|| handle.to_owned()))?;
    record.access_payload = r.json()?;
    record.data = r.json()?;
    if !r.0.is_empty() {
        return Err("trailing bytes after a session record".into());
    }
    Ok(record)
}

/// Decodes a session without its payload and data, which are left empty (no
/// JSON is parsed for versions 2 and 3).
pub(super) fn decode_head(handle: &str, bytes: &[u8]) -> Result<SessionRecord, String> {
    match binary(bytes) {
        Some(binary) => {
            let (mut r, stored) = binary?;
            r.fixed_part(stored.unwrap_or_else(|| handle.to_owned()))
        }
        None => decode_session(handle, bytes).map(|mut record| {
            record.access_payload = Map::new();
            record.data = Map::new();
            record
        }),
    }
}

/// Decodes only a session's lineage (no JSON is parsed for versions 2 and 3).
pub(super) fn decode_lineage(bytes: &[u8]) -> Result<Lineage, String> {
    match binary(bytes) {
        Some(binary) => binary?.0.fixed_part(String::new()).map(Lineage::from),
        None => decode_session("", bytes).map(Lineage::from),
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Handles, user and tenant ids and hashes are far below 64 KiB (the
    // API refuses longer ones); a longer string is cut at a char boundary
    // rather than corrupting the record.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn push_hash(out: &mut Vec<u8>, h: &TokenHash) {
    out.push(HASH_SHA256);
    out.extend_from_slice(&h.0);
}

fn push_generation(out: &mut Vec<u8>, g: &Generation) {
    push_hash(out, &g.refresh_hash);
    match &g.anti_csrf_hash {
        None => out.push(0),
        Some(h) => {
            out.push(1);
            push_hash(out, h);
        }
    }
}

/// The bytes still to read, and whether they hold version 4's fields.
struct Reader<'a>(&'a [u8], bool);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("truncated session record".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn len16(&mut self) -> Result<usize, String> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize)
    }

    fn str(&mut self) -> Result<String, String> {
        let n = self.len16()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a stored string is not UTF-8".into())
    }

    /// Everything before the payload and data, which are left empty.
    fn fixed_part(&mut self, handle: String) -> Result<SessionRecord, String> {
        let (user_id, tenant_id) = (self.str()?, self.str()?);
        let (created_at_ms, expires_at_ms, rotated_at_ms) = (self.u64()?, self.u64()?, self.u64()?);
        let (last_active_ms, timeouts, device) = if self.1 {
            let (last_active_ms, idle_ms, max_lifetime_ms) =
                (self.u64()?, self.u64()?, self.u64()?);
            let device = Device {
                ip_address: self.str()?,
                user_agent: self.str()?,
                label: self.str()?,
            };
            let timeouts = Timeouts {
                idle_ms,
                max_lifetime_ms,
            };
            (last_active_ms, timeouts, device)
        } else {
            (rotated_at_ms, Timeouts::default(), Device::default())
        };
        let current = self.generation()?;
        let previous = match self.u8()? {
            0 => None,
            _ => Some(self.generation()?),
        };
        Ok(SessionRecord {
            handle,
            user_id,
            tenant_id,
            access_payload: Map::new(),
            data: Map::new(),
            created_at_ms,
            expires_at_ms,
            current,
            previous,
            rotated_at_ms,
            last_active_ms,
            timeouts,
            device,
        })
    }

    fn hash(&mut self) -> Result<TokenHash, String> {
        match self.u8()? {
            HASH_SHA256 => Ok(TokenHash(self.take(32)?.try_into().expect("32 bytes"))),
            HASH_TEXT => hex_hash(&self.str()?),
            t => Err(format!("unknown hash tag {t}")),
        }
    }

    fn optional_hash(&mut self) -> Result<Option<TokenHash>, String> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.hash().map(Some),
        }
    }

    fn generation(&mut self) -> Result<Generation, String> {
        Ok(Generation {
            refresh_hash: self.hash()?,
            anti_csrf_hash: self.optional_hash()?,
        })
    }

    fn json(&mut self) -> Result<Map<String, Value>, String> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        serde_json::from_slice(self.take(n)?).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> SessionRecord {
        SessionRecord {
            handle: "0b0c4e9e-4a3f-4f7e-9d61-1c9d0e7f6a21".into(),
            user_id: "user-ü-1".into(),
            tenant_id: "public".into(),
            access_payload: json!({"role": "admin", "n": [1, 2.5, null]})
                .as_object()
                .unwrap()
                .clone(),
            data: json!({"theme": "dark"}).as_object().unwrap().clone(),
            created_at_ms: 1,
            expires_at_ms: u64::MAX,
            current: Generation {
                refresh_hash: TokenHash([0xab; 32]),
                anti_csrf_hash: Some(TokenHash([0x0f; 32])),
            },
            previous: Some(Generation {
                refresh_hash: TokenHash([0xcd; 32]),
                anti_csrf_hash: None,
            }),
            rotated_at_ms: 42,
            last_active_ms: 42,
            timeouts: Timeouts::default(),
            device: Device::default(),
        }
    }

    /// A record with what only version 4 holds.
    fn sample_with_device() -> SessionRecord {
        SessionRecord {
            last_active_ms: 99,
            timeouts: Timeouts {
                idle_ms: 60_000,
                max_lifetime_ms: 3_600_000,
            },
            device: Device {
                ip_address: "2001:db8::1".into(),
                user_agent: "Mozilla/5.0 (X11; Linux x86_64)".into(),
                label: "Laptop ü".into(),
            },
            ..sample()
        }
    }

    /// `r` (no activity, timeouts or device of its own) in version 3:
    /// version 4 without those fields.
    fn version_3(r: &SessionRecord) -> Vec<u8> {
        let v4 = encode_session(r);
        let times = 1 + (2 + r.user_id.len()) + (2 + r.tenant_id.len()) + 24;
        let mut v3 = vec![V3];
        v3.extend_from_slice(&v4[1..times]);
        v3.extend_from_slice(&v4[times + 24 + 6..]);
        v3
    }

    /// `r` in version 2: version 3 with the handle after the version byte.
    fn version_2(r: &SessionRecord) -> Vec<u8> {
        let v3 = version_3(r);
        let mut v2 = vec![V2];
        push_str(&mut v2, &r.handle);
        v2.extend_from_slice(&v3[1..]);
        v2
    }

    #[test]
    fn records_round_trip_and_are_smaller_than_json() {
        let r = sample();
        let bytes = encode_session(&r);
        assert_eq!(decode_session(&r.handle, &bytes).unwrap(), r);
        assert!(
            !bytes
                .windows(r.handle.len())
                .any(|w| w == r.handle.as_bytes()),
            "the key holds the handle"
        );
        let mut v1 = vec![V1];
        serde_json::to_writer(&mut v1, &V1Session::from(&r)).unwrap();
        assert_eq!(
            decode_session("", &v1).unwrap(),
            r,
            "version 1 is still read"
        );
        let v2 = version_2(&r);
        assert_eq!(
            decode_session("", &v2).unwrap(),
            r,
            "version 2 is still read"
        );
        let v3 = version_3(&r);
        assert_eq!(
            decode_session(&r.handle, &v3).unwrap(),
            r,
            "version 3 is still read"
        );
        let full = sample_with_device();
        let v4 = encode_session(&full);
        assert_eq!(decode_session(&full.handle, &v4).unwrap(), full);
        assert_eq!(decode_lineage(&v4).unwrap(), Lineage::of(&full));
        assert_eq!(
            decode_head(&full.handle, &v4).unwrap().device,
            full.device,
            "the device is in the fixed part"
        );
        assert_eq!(decode_lineage(&v2).unwrap(), Lineage::of(&r));
        assert!(
            bytes.len() + 190 < v1.len(),
            "{} vs {}",
            bytes.len(),
            v1.len()
        );
        assert_eq!(decode_lineage(&bytes).unwrap(), Lineage::of(&r));
        assert_eq!(decode_lineage(&v1).unwrap(), Lineage::of(&r));
    }

    #[test]
    fn a_hash_stored_as_text_reads_as_its_bytes() {
        let r = sample();
        let bytes = encode_session(&r);
        // The current refresh hash follows the version, the two strings,
        // the six numbers and the three empty device strings.
        let at = 1 + (2 + r.user_id.len()) + (2 + r.tenant_id.len()) + 48 + 6;
        assert_eq!(bytes[at], HASH_SHA256);
        let as_text = |text: &str| {
            let mut old = bytes[..at].to_vec();
            old.push(HASH_TEXT);
            push_str(&mut old, text);
            old.extend_from_slice(&bytes[at + 33..]);
            decode_session(&r.handle, &old)
        };
        assert_eq!(
            as_text(&"AB".repeat(32)).unwrap().current.refresh_hash,
            TokenHash([0xab; 32])
        );
        assert!(as_text("not a hash").is_err());
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let r = sample();
        // The payload and data, each with its length, close the record.
        let json = |m: &Map<String, Value>| 4 + serde_json::to_vec(m).unwrap().len();
        let maps = json(&r.access_payload) + json(&r.data);
        for bytes in [
            encode_session(&r),
            encode_session(&sample_with_device()),
            version_3(&r),
            version_2(&r),
        ] {
            let fixed = bytes.len() - maps;
            for cut in 0..bytes.len() {
                assert!(decode_session("h", &bytes[..cut]).is_err(), "cut at {cut}");
                assert_eq!(
                    decode_lineage(&bytes[..cut]).is_err(),
                    cut < fixed,
                    "cut at {cut}"
                );
            }
            let mut extra = bytes.clone();
            extra.push(0);
            assert!(decode_session("h", &extra).is_err());
        }
        assert!(
            decode_session("h", &[9, 1, 2])
                .unwrap_err()
                .contains("version 9")
        );
    }
}
