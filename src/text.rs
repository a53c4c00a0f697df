//! Wording shared by messages people read: counts with the noun in the
//! right number. It formats text only; it never decides what is reported.

/// `n` followed by `one` when `n` is 1 and by `many` otherwise (0 included):
/// `count(1, "session", "sessions")` is `1 session`, `count(0, ..)` is
/// `0 sessions`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_singular_and_everything_else_plural() {
        assert_eq!(count(0, "session", "sessions"), "0 sessions");
        assert_eq!(count(1, "session", "sessions"), "1 session");
        assert_eq!(count(2, "session", "sessions"), "2 sessions");
        assert_eq!(
            count(1, "user's buckets", "users' buckets"),
            "1 user's buckets"
        );
    }
}
