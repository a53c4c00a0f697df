//! Claim validators and failures between protobuf and domain form.

use serde_json::Value;
use tonic::Status;

use super::convert::{
    duration, duration_ms, json_to_struct, json_to_value, list_to_json, value_to_json,
};
use super::error::invalid;
use crate::claims::{Check, InvalidClaim, Validator, Validators};
use crate::pb;
use crate::pb::claim_validator::Check as PbCheck;

/// Converts the validators of a request; `field` is the repeated field's name.
pub fn validators(field: &str, input: Vec<pb::ClaimValidator>) -> Result<Vec<Validator>, Status> {
    input
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = format!("{field}[{i}]");
            let check = match v.check {
                Some(PbCheck::HasValue(x)) => {
                    Check::HasValue(value_to_json(&format!("{at}.has_value"), x)?)
                }
                Some(PbCheck::Includes(x)) => {
                    Check::Includes(value_to_json(&format!("{at}.includes"), x)?)
                }
                Some(PbCheck::Excludes(x)) => {
                    Check::Excludes(value_to_json(&format!("{at}.excludes"), x)?)
                }
                Some(PbCheck::IncludesAll(l)) => {
                    Check::IncludesAll(list_to_json(&format!("{at}.includes_all"), l)?)
                }
                Some(PbCheck::IncludesAny(l)) => {
                    Check::IncludesAny(list_to_json(&format!("{at}.includes_any"), l)?)
                }
                Some(PbCheck::ExcludesAll(l)) => {
                    Check::ExcludesAll(list_to_json(&format!("{at}.excludes_all"), l)?)
                }
                Some(PbCheck::IsTrue(_)) => Check::HasValue(Value::Bool(true)),
                Some(PbCheck::IsFalse(_)) => Check::HasValue(Value::Bool(false)),
                None => {
                    return Err(invalid(
                        &at,
                        "sets no check: use one of has_value, includes, excludes, includes_all, \
                         includes_any, excludes_all, is_true, is_false",
                    ));
                }
            };
            let max_age_ms = v
                .max_age
                .as_ref()
                .map(|d| duration_ms(&format!("{at}.max_age"), d))
                .transpose()?;
            Ok(Validator {
                id: if v.id.is_empty() {
                    v.claim_key.clone()
                } else {
                    v.id
                },
                claim_key: v.claim_key,
                check,
                max_age_ms,
                refetch: v.refetch,
            })
        })
        .collect()
}

/// Converts the validators of a request and checks them (how many, their
/// claim keys): what the domain takes.
pub fn checked_validators(
    field: &str,
    input: Vec<pb::ClaimValidator>,
) -> Result<Validators, Status> {
    let converted = validators(field, input)?;
    Ok(Validators::check(field, converted)?)
}

/// A failure in protobuf form.
pub fn invalid_claim(c: InvalidClaim) -> pb::InvalidClaim {
    pb::InvalidClaim {
        id: c.id,
        claim_key: c.claim_key,
        message: c.message.to_owned(),
        expected: c.expected.as_ref().map(json_to_value),
        actual: c.actual.as_ref().map(json_to_value),
        age: c.age_ms.map(duration),
        max_age: c.max_age_ms.map(duration),
        reason: Some(json_to_struct(&c.reason)),
    }
}
