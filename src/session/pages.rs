//! Page tokens of a user's session listings: opaque to clients and
//! tamper-evident. A token holds where the listing stopped (tenant,
//! creation time, handle) and an HMAC-SHA256 tag, under a server secret
//! kept in the store (so every replica reads every replica's tokens), over
//! that place and what was listed (which listing, user and tenant). A
//! token changed in any byte, or handed to another listing, user or tenant,
//! is refused.
//!
//! ```text
//! base64url( 1 | created_at_ms u64 | u16 len + tenant | u16 len + handle | tag[..16] )
//! ```

use aws_lc_rs::hmac;

use crate::error::{Error, Result};
use crate::store::UserCursor;
use crate::token::{b64url, b64url_decode, ct_eq};

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Longer text is no token of ours (a tenant and handle are far shorter).
const MAX_TOKEN_LEN: usize = 1024;

/// Which listing a token continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// ListSessions and ListMySessions.
    Sessions = 1,
    /// GetAllSessionHandlesForUser.
    Handles = 2,
}

/// What a page token is bound to: the listing, its user and its tenant
/// (`None`: every tenant).
#[derive(Debug, Clone, Copy)]
pub(super) struct Scope<'a> {
    pub kind: Kind,
    pub user_id: &'a str,
    pub tenant_id: Option<&'a str>,
}

/// Makes and opens page tokens.
pub(super) struct PageTokens {
    key: hmac::Key,
}

impl PageTokens {
    /// The store secret the tag key is.
    pub const SECRET_NAME: &'static str = "page-token-mac";
    /// What it is, for errors.
    pub const SECRET_WHAT: &'static str = "the page-token MAC secret";

    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn tag(&self, scope: &Scope<'_>, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"sessiond page token\0");
        ctx.update(&[scope.kind as u8]);
        push_lp(&mut ctx, scope.user_id.as_bytes());
        match scope.tenant_id {
            None => ctx.update(&[0]),
            Some(t) => {
                ctx.update(&[1]);
                push_lp(&mut ctx, t.as_bytes());
            }
        }
        ctx.update(body);
        ctx.sign()
    }

    /// The token of the page that follows `cursor`.
    pub fn seal(&self, scope: &Scope<'_>, cursor: &UserCursor) -> String {
        let mut raw = Vec::with_capacity(64 + cursor.tenant_id.len() + cursor.handle.len());
        raw.push(VERSION);
        raw.extend_from_slice(&cursor.created_at_ms.to_be_bytes());
        for s in [&cursor.tenant_id, &cursor.handle] {
            raw.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_be_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
        let tag = self.tag(scope, &raw);
        raw.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        b64url(&raw)
    }

    /// Where the page of `token` starts; [`Error::BadPageToken`] for a
    /// token this server did not make for `scope`.
    pub fn open(&self, scope: &Scope<'_>, token: &str) -> Result<UserCursor> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Error::BadPageToken);
        }
        let raw = b64url_decode(token).ok_or(Error::BadPageToken)?;
        if raw.len() < 1 + 8 + 2 + 2 + TAG_LEN || raw[0] != VERSION {
            return Err(Error::BadPageToken);
        }
        let (body, tag) = raw.split_at(raw.len() - TAG_LEN);
        if !ct_eq(&self.tag(scope, body).as_ref()[..TAG_LEN], tag) {
            return Err(Error::BadPageToken);
        }
        let mut rest = &body[1..];
        let created_at_ms = u64::from_be_bytes(take(&mut rest, 8)?.try_into().expect("8 bytes"));
        let tenant_id = take_str(&mut rest)?;
        let handle = take_str(&mut rest)?;
        if !rest.is_empty() {
            return Err(Error::BadPageToken);
        }
        Ok(UserCursor {
            tenant_id,
            created_at_ms,
            handle,
        })
    }
}

fn push_lp(ctx: &mut hmac::Context, bytes: &[u8]) {
    ctx.update(&(bytes.len() as u64).to_be_bytes());
    ctx.update(bytes);
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if rest.len() < n {
        return Err(Error::BadPageToken);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_str(rest: &mut &[u8]) -> Result<String> {
    let n = u16::from_be_bytes(take(rest, 2)?.try_into().expect("2 bytes")) as usize;
    String::from_utf8(take(rest, n)?.to_vec()).map_err(|_| Error::BadPageToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(user_id: &str) -> Scope<'_> {
        Scope {
            kind: Kind::Sessions,
            user_id,
            tenant_id: Some("public"),
        }
    }

    #[test]
    fn tokens_round_trip_and_any_change_is_refused() {
        let pages = PageTokens::new(&[7; 32]);
        let cursor = UserCursor {
            tenant_id: "public".into(),
            created_at_ms: 1_700_000_000_000,
            handle: "0b0c4e9e-4a3f-4f7e-9d61-1c9d0e7f6a21".into(),
        };
        let token = pages.seal(&scope("ann"), &cursor);
        assert!(token.len() < 120, "{}", token.len());
        assert_eq!(pages.open(&scope("ann"), &token).unwrap(), cursor);
        // Another user, tenant or listing.
        assert!(pages.open(&scope("bob"), &token).is_err());
        let all = Scope {
            tenant_id: None,
            ..scope("ann")
        };
        assert!(pages.open(&all, &token).is_err());
        let handles = Scope {
            kind: Kind::Handles,
            ..scope("ann")
        };
        assert!(pages.open(&handles, &token).is_err());
        // Another server's secret.
        assert!(
            PageTokens::new(&[8; 32])
                .open(&scope("ann"), &token)
                .is_err()
        );
        // Every byte flipped, and every cut.
        let raw = b64url_decode(&token).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 1;
            assert!(
                pages.open(&scope("ann"), &b64url(&bad)).is_err(),
                "byte {i}"
            );
            assert!(
                pages.open(&scope("ann"), &b64url(&raw[..i])).is_err(),
                "cut {i}"
            );
        }
        for junk in ["", "!", "AAAA", &"A".repeat(5000)] {
            assert!(matches!(
                pages.open(&scope("ann"), junk),
                Err(Error::BadPageToken)
            ));
        }
    }
}
