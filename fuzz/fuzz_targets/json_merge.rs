//! RFC 7386 JSON Merge Patch (`sessiond::buckets::merge_patch`).
//!
//! Input: `target JSON` 0x00 `patch JSON` (no 0x00: skipped), each side
//! parsed with `serde_json::from_slice`; inputs that do not parse are
//! skipped. Checks, besides "never panics":
//! - idempotence: applying the patch to the result changes nothing;
//! - where the patch is an object, no key whose patch value is null is in
//!   the result at that level (at every level of nesting);
//! - the result is exactly what RFC 7386 section 2 defines, checked
//!   structurally against target and patch (`check` below).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sessiond::buckets::merge_patch;

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let (Ok(target), Ok(patch)) = (
        serde_json::from_slice::<Value>(&data[..split]),
        serde_json::from_slice::<Value>(&data[split + 1..]),
    ) else {
        return;
    };

    let mut once = target.clone();
    merge_patch(&mut once, &patch);

    let mut twice = once.clone();
    merge_patch(&mut twice, &patch);
    assert_eq!(once, twice, "not idempotent: {target} + {patch}");

    check(&once, &target, &patch);
});

/// Asserts that `result` is MergePatch(`target`, `patch`) as RFC 7386
/// section 2 defines it.
fn check(result: &Value, target: &Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        assert_eq!(result, patch, "a non-object patch replaces the target");
        return;
    };
    let Value::Object(result) = result else {
        panic!("an object patch gave a non-object: {result}");
    };
    for (key, value) in patch {
        if value.is_null() {
            assert!(
                !result.contains_key(key),
                "key {key:?} patched with null is still present"
            );
        } else {
            let Some(merged) = result.get(key) else {
                panic!("key {key:?} patched with {value} is missing");
            };
            let before = target.get(key).unwrap_or(&Value::Null);
            check(merged, before, value);
        }
    }
    // Keys the patch does not name are the target's, untouched (none when
    // the target was not an object).
    for (key, value) in result {
        if patch.contains_key(key) {
            continue;
        }
        assert_eq!(
            target.get(key),
            Some(value),
            "key {key:?} not in the patch changed"
        );
    }
    if let Value::Object(target) = target {
        for key in target.keys().filter(|k| !patch.contains_key(*k)) {
            assert!(
                result.contains_key(key),
                "key {key:?} not in the patch vanished"
            );
        }
    }
}
