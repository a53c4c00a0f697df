//! The domain error and the table of stable error reasons.
//!
//! [`Reason`] is the one list of machine-readable reasons clients see in
//! `google.rpc.ErrorInfo.reason`, with the gRPC code each maps to. [`Error`]
//! is what session and JWT rules return; `api::error` turns it into a
//! `tonic::Status` with one exhaustive match. Error messages may be shown to
//! callers: they name rules, never a token, key or secret. Request fields
//! are named only in errors made from the edge's checks ([`InputError`]s,
//! which carry the field the edge named); what the domain finds on its own
//! names the domain thing ([`Oversized`]), and `api::error` maps it to a
//! field.
//!
//! [`InputError`]: crate::input::InputError

use crate::claims::{ClaimError, InvalidClaim};
use crate::store::StoreError;
use crate::token::KeyError;

/// Stable error reasons (`ErrorInfo.reason`, domain `sessiond`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Token malformed, bad signature, unknown key, session gone.
    Unauthorised,
    /// Access token expired, or anti-CSRF check failed on GetSession.
    TryRefreshToken,
    /// A rotated-out refresh token was reused; the session is revoked.
    TokenTheftDetected,
    /// A claim validator failed.
    InvalidClaims,
    /// The named session does not exist or has expired.
    SessionNotFound,
    /// A payload tried to set a reserved claim.
    ProtectedClaim,
    /// Any other bad input.
    InvalidArgument,
    /// The caller sent no (valid) API key or token.
    MissingCredentials,
    /// The caller's credentials do not allow the call.
    PermissionDenied,
    /// A claim provider did not answer in time or failed.
    ClaimProviderUnavailable,
    /// No claim provider is configured for a claim key.
    NoClaimProvider,
    /// Too many calls at once; retry with backoff.
    Overloaded,
    /// The call ran past its deadline.
    Timeout,
    /// The request message is larger than `--max-message-size`.
    MessageTooLarge,
    /// The method (or its request's compression) is not served here.
    Unimplemented,
    /// Health was asked about a service this server does not have.
    UnknownService,
    /// The client cancelled the call, or the connection went away.
    Cancelled,
    /// The store cannot serve the call now (disk full, I/O failure); retry.
    StoreUnavailable,
    /// A stored record cannot be read back.
    StoreCorrupt,
    /// The user holds as many sessions as allowed.
    SessionLimitReached,
    /// A failure inside sessiond; never caused by input.
    Internal,
}

impl Reason {
    /// The reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorised => "UNAUTHORISED",
            Self::TryRefreshToken => "TRY_REFRESH_TOKEN",
            Self::TokenTheftDetected => "TOKEN_THEFT_DETECTED",
            Self::InvalidClaims => "INVALID_CLAIMS",
            Self::SessionNotFound => "SESSION_NOT_FOUND",
            Self::ProtectedClaim => "PROTECTED_CLAIM",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::MissingCredentials => "MISSING_CREDENTIALS",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::ClaimProviderUnavailable => "CLAIM_PROVIDER_UNAVAILABLE",
            Self::NoClaimProvider => "NO_CLAIM_PROVIDER",
            Self::Overloaded => "OVERLOADED",
            Self::Timeout => "TIMEOUT",
            Self::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::UnknownService => "UNKNOWN_SERVICE",
            Self::Cancelled => "CANCELLED",
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::StoreCorrupt => "STORE_CORRUPT",
            Self::SessionLimitReached => "SESSION_LIMIT_REACHED",
            Self::Internal => "INTERNAL",
        }
    }

    /// The gRPC code that goes with the reason.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::Unauthorised
            | Self::TryRefreshToken
            | Self::TokenTheftDetected
            | Self::MissingCredentials => Code::Unauthenticated,
            Self::InvalidClaims | Self::PermissionDenied => Code::PermissionDenied,
            Self::SessionNotFound => Code::NotFound,
            Self::ProtectedClaim | Self::InvalidArgument => Code::InvalidArgument,
            Self::ClaimProviderUnavailable => Code::Unavailable,
            Self::NoClaimProvider => Code::FailedPrecondition,
            Self::Overloaded | Self::SessionLimitReached => Code::ResourceExhausted,
            Self::Timeout => Code::DeadlineExceeded,
            Self::MessageTooLarge => Code::OutOfRange,
            Self::Unimplemented => Code::Unimplemented,
            Self::UnknownService => Code::NotFound,
            Self::Cancelled => Code::Cancelled,
            Self::StoreUnavailable => Code::Unavailable,
            Self::StoreCorrupt => Code::DataLoss,
            Self::Internal => Code::Internal,
        }
    }
}

/// What session and JWT rules fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The token or session is not acceptable; the message says why.
    #[error("{0}")]
    Unauthorised(String),
    /// The access token expired or failed the anti-CSRF check.
    #[error("{0}")]
    TryRefreshToken(String),
    /// A rotated-out refresh token was reused; the session was revoked.
    #[error("a rotated-out refresh token was reused; the session has been revoked")]
    TokenTheft {
        /// The revoked session.
        session_handle: String,
        /// Its user.
        user_id: String,
    },
    /// The named session does not exist or has expired.
    #[error("no session with this handle exists")]
    SessionNotFound,
    /// A payload tried to set a reserved claim.
    #[error("`{claim}` is a reserved claim and cannot be set")]
    ProtectedClaim {
        /// The request field holding the claim.
        field: String,
        /// The claim.
        claim: String,
    },
    /// Claim validators failed.
    #[error(
        "{} failed: {}",
        crate::text::count(.0.len() as u64, "claim validator", "claim validators"),
        claim_list(.0)
    )]
    InvalidClaims(Vec<InvalidClaim>),
    /// A claim's value could not be fetched.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// Bad input.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The request field at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Something the domain built from checked input grew past its size
    /// limit (a check only the domain can make); nothing was changed.
    #[error("{what}: {problem}")]
    TooLarge {
        /// What grew too large.
        what: Oversized,
        /// How ("is 70000 bytes of JSON; the limit is 65536 bytes").
        problem: String,
    },
    /// A JWT signed by the rotating key would outlive the key's rotation.
    #[error(
        "a JWT signed by the rotating key may live at most as long as the key rotation \
         interval ({}s); use the static key for longer",
        .most_ms / 1000
    )]
    JwtOutlivesKey {
        /// The rotation interval, ms.
        most_ms: u64,
    },
    /// The user already holds the most sessions allowed, and the limit
    /// refuses new ones.
    #[error(
        "the user already has {max} live sessions in this tenant, the most allowed: \
         sign out of one first"
    )]
    SessionLimitReached {
        /// The limit.
        max: usize,
    },
    /// A page token that this server did not hand out for this listing.
    #[error(
        "is not a page token of this listing; pass next_page_token as it came, \
         with the same user and tenant"
    )]
    BadPageToken,
    /// An end user named a session that is not one of their own.
    #[error("this is not a session of yours")]
    NotYourSession,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key handling failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// What the domain found too large once it had built it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Oversized {
    /// A session's access token payload after a merge into it.
    #[error("the merged access token payload")]
    MergedPayload,
    /// A session's access token payload after claim values were stored in it.
    #[error("the access token payload with its claims")]
    PayloadWithClaims,
    /// A user's bucket after a merge patch.
    #[error("the merged bucket")]
    MergedBucket,
}

impl From<crate::input::InputError> for Error {
    fn from(e: crate::input::InputError) -> Self {
        match e {
            crate::input::InputError::Invalid { field, message } => {
                Self::InvalidArgument { field, message }
            }
            crate::input::InputError::ProtectedClaim { field, claim } => {
                Self::ProtectedClaim { field, claim }
            }
        }
    }
}

fn claim_list(claims: &[InvalidClaim]) -> String {
    claims
        .iter()
        .map(|c| format!("{} ({})", c.id, c.message))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Result alias for domain operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_validators_are_counted_in_the_right_number() {
        let failed = |id: &str| InvalidClaim {
            id: id.into(),
            claim_key: id.into(),
            message: crate::claims::MISSING,
            expected: None,
            actual: None,
            age_ms: None,
            max_age_ms: None,
            reason: Default::default(),
        };
        let one = Error::InvalidClaims(vec![failed("st-role")]).to_string();
        assert!(
            one.starts_with("1 claim validator failed: st-role"),
            "{one}"
        );
        let two = Error::InvalidClaims(vec![failed("a"), failed("b")]).to_string();
        assert!(two.starts_with("2 claim validators failed: a"), "{two}");
    }
}
