//! Domain errors to gRPC statuses: one exhaustive conversion.
//!
//! Every status carries `google.rpc.ErrorInfo` (domain `sessiond`, a reason
//! from [`Reason`]); bad input also carries `google.rpc.BadRequest` naming
//! the field. Internal failures are logged in full and answered with a
//! generic message.

use std::collections::HashMap;

use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use crate::claims::ClaimError;
use crate::error::{Error, Oversized, Reason};
use crate::store::StoreError;
use crate::token::KeyError;

/// The ErrorInfo domain.
pub const DOMAIN: &str = "sessiond";

/// A status with ErrorInfo, and a BadRequest violation when `field` is set.
pub fn status(
    reason: Reason,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
    field: Option<(&str, &str)>,
) -> Status {
    let mut details = ErrorDetails::with_error_info(reason.as_str(), DOMAIN, metadata);
    if let Some((field, description)) = field {
        details.add_bad_request_violation(field, description);
    }
    Status::with_error_details(reason.code(), message, details)
}

/// INVALID_ARGUMENT naming `field`.
pub fn invalid(field: &str, description: &str) -> Status {
    status(
        Reason::InvalidArgument,
        format!("{field}: {description}"),
        HashMap::new(),
        Some((field, description)),
    )
}

impl From<crate::input::InputError> for Status {
    fn from(e: crate::input::InputError) -> Self {
        Error::from(e).into()
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Unauthorised(_) => status(Reason::Unauthorised, message, HashMap::new(), None),
            Error::TryRefreshToken(_) => {
                status(Reason::TryRefreshToken, message, HashMap::new(), None)
            }
            Error::TokenTheft {
                session_handle,
                user_id,
            } => status(
                Reason::TokenTheftDetected,
                message,
                HashMap::from([
                    ("session_handle".to_owned(), session_handle),
                    ("user_id".to_owned(), user_id),
                ]),
                None,
            ),
            Error::SessionNotFound => {
                status(Reason::SessionNotFound, message, HashMap::new(), None)
            }
            Error::ProtectedClaim { field, claim } => status(
                Reason::ProtectedClaim,
                format!("{field}: {message}"),
                HashMap::from([("claim".to_owned(), claim)]),
                Some((&field, "is a reserved access token claim")),
            ),
            Error::InvalidArgument { field, message: m } => status(
                Reason::InvalidArgument,
                message,
                HashMap::new(),
                Some((&field, &m)),
            ),
            Error::TooLarge { what, problem } => match what {
                Oversized::MergedPayload => invalid("access_token_payload_update", &problem),
                Oversized::PayloadWithClaims => invalid("value", &problem),
                Oversized::MergedBucket => invalid(
                    "data",
                    &format!("the merged bucket {problem}; nothing was changed"),
                ),
            },
            Error::JwtOutlivesKey { .. } => invalid("validity", &message),
            Error::InvalidClaims(failed) => {
                let keys: Vec<&str> = failed.iter().map(|c| c.claim_key.as_str()).collect();
                let mut details = ErrorDetails::with_error_info(
                    Reason::InvalidClaims.as_str(),
                    DOMAIN,
                    HashMap::from([("claim_keys".to_owned(), keys.join(","))]),
                );
                for claim in &failed {
                    // type: SuperTokens' reason message; subject: the validator
                    // id; description: the reason as SuperTokens' JSON.
                    let description = serde_json::Value::Object(claim.reason.clone()).to_string();
                    details.add_precondition_failure_violation(
                        claim.message,
                        &claim.id,
                        description,
                    );
                }
                Status::with_error_details(Reason::InvalidClaims.code(), message, details)
            }
            Error::Claim(ClaimError::ProviderUnavailable { claim_key, .. }) => status(
                Reason::ClaimProviderUnavailable,
                message,
                HashMap::from([("claim_key".to_owned(), claim_key)]),
                None,
            ),
            Error::Claim(ClaimError::NoProvider { claim_key }) => status(
                Reason::NoClaimProvider,
                message,
                HashMap::from([("claim_key".to_owned(), claim_key)]),
                None,
            ),
            Error::SessionLimitReached { max } => status(
                Reason::SessionLimitReached,
                message,
                HashMap::from([("max_sessions_per_user".to_owned(), max.to_string())]),
                None,
            ),
            Error::BadPageToken => invalid("page_token", &message),
            Error::NotYourSession => {
                status(Reason::PermissionDenied, message, HashMap::new(), None)
            }
            Error::Store(inner) | Error::Key(KeyError::Store(inner)) => store_failure(&inner),
            Error::Key(inner) => internal(&inner),
        }
    }
}

/// A store failure: retryable UNAVAILABLE, or DATA_LOSS for a record that
/// cannot be read back; the log has the store's own message.
pub fn store_failure(e: &StoreError) -> Status {
    tracing::error!(error = %e, "store failure");
    let (reason, message) = match e {
        StoreError::Corrupt(_) => (
            Reason::StoreCorrupt,
            "a record in the session store cannot be read back; see the server log",
        ),
        StoreError::Unavailable(why) => (Reason::StoreUnavailable, why.as_str()),
        e if e.is_disk_full() => (Reason::StoreUnavailable, crate::store::DISK_FULL),
        StoreError::Locked(_) | StoreError::Backend(_) | StoreError::Io(_) => (
            Reason::StoreUnavailable,
            "the session store cannot serve this call now; retry later",
        ),
    };
    status(reason, message, HashMap::new(), None)
}

fn internal(e: &dyn std::error::Error) -> Status {
    tracing::error!(error = %e, "internal failure");
    status(Reason::Internal, "internal error", HashMap::new(), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn reason(status: &Status) -> String {
        status.get_details_error_info().unwrap().reason
    }

    fn violation(status: &Status) -> (String, String) {
        let bad = status.get_details_bad_request().unwrap();
        let v = &bad.field_violations[0];
        (v.field.clone(), v.description.clone())
    }

    /// What only the domain can find too large, or too long-lived, reaches
    /// the client named by the request field it came from.
    #[test]
    fn domain_errors_are_mapped_to_their_request_fields() {
        let problem = "is 9 bytes of JSON; the limit is 8 bytes";
        for (what, field, description) in [
            (
                Oversized::MergedPayload,
                "access_token_payload_update",
                problem.to_owned(),
            ),
            (Oversized::PayloadWithClaims, "value", problem.to_owned()),
            (
                Oversized::MergedBucket,
                "data",
                format!("the merged bucket {problem}; nothing was changed"),
            ),
        ] {
            let status = Status::from(Error::TooLarge {
                what,
                problem: problem.to_owned(),
            });
            assert_eq!(status.code(), Code::InvalidArgument);
            assert_eq!(reason(&status), "INVALID_ARGUMENT");
            assert_eq!(status.message(), format!("{field}: {description}"));
            assert_eq!(violation(&status), (field.to_owned(), description));
        }

        let status = Status::from(Error::JwtOutlivesKey {
            most_ms: 86_400_000,
        });
        let description = "a JWT signed by the rotating key may live at most as long as the key \
                           rotation interval (86400s); use the static key for longer";
        assert_eq!(status.message(), format!("validity: {description}"));
        assert_eq!(
            violation(&status),
            ("validity".to_owned(), description.to_owned())
        );
    }

    #[test]
    fn store_failures_are_retryable_or_data_loss_never_internal() {
        let full = Status::from(Error::Store(StoreError::Backend(
            "create_session: No space left on device (os error 28)".into(),
        )));
        assert_eq!(full.code(), Code::Unavailable);
        assert_eq!(reason(&full), "STORE_UNAVAILABLE");
        assert!(
            full.message().contains("disk is full"),
            "{}",
            full.message()
        );

        let io = Status::from(Error::Key(KeyError::Store(StoreError::Backend(
            "Input/output error (os error 5)".into(),
        ))));
        assert_eq!(
            (io.code(), reason(&io).as_str()),
            (Code::Unavailable, "STORE_UNAVAILABLE")
        );
        assert!(
            !io.message().contains("os error"),
            "the store's text stays in the log"
        );

        // The log gets the operation that failed; the caller does not.
        let failed =
            StoreError::io("sled", &std::io::Error::from_raw_os_error(28)).during("update_session");
        assert!(failed.is_disk_full());
        assert!(
            failed
                .to_string()
                .contains("update_session: sled: No space left on device"),
            "{failed}"
        );
        let status = Status::from(Error::Store(failed));
        assert!(!status.message().contains("update_session"), "{status:?}");

        let corrupt = Status::from(Error::Store(StoreError::Corrupt("record h".into())));
        assert_eq!(
            (corrupt.code(), reason(&corrupt).as_str()),
            (Code::DataLoss, "STORE_CORRUPT")
        );
    }
}
