//! LIST patterns: `*` matches anything, `%` anything but the hierarchy delimiter.

/// Whether `name` matches `pattern`. Iterative, with one backtracking point per wildcard
/// kind, so it runs in time bounded by the product of the lengths.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Dynamic programming over (pattern position, name position): no recursion.
    let mut reachable = vec![false; name.len() + 1];
    reachable[0] = true;
    for (p, &wild) in pattern.iter().enumerate() {
        let mut next = vec![false; name.len() + 1];
        match wild {
            '*' | '%' => {
                let mut open = false;
                for n in 0..=name.len() {
                    if reachable[n] {
                        open = true;
                    }
                    next[n] = open;
                    if wild == '%' && n < name.len() && name[n] == '/' {
                        open = false;
                    }
                }
            }
            c => {
                for n in 0..name.len() {
                    let equal = if p < 5 && is_inbox_prefix(&pattern) {
                        name[n].eq_ignore_ascii_case(&c)
                    } else {
                        name[n] == c
                    };
                    next[n + 1] = reachable[n] && equal;
                }
            }
        }
        reachable = next;
    }
    reachable[name.len()]
}

/// INBOX is case-insensitive; a pattern starting with it matches INBOX in any case.
fn is_inbox_prefix(pattern: &[char]) -> bool {
    let head: String = pattern.iter().take(5).collect();
    head.eq_ignore_ascii_case("INBOX")
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn list_wildcards_match_as_imap_says() {
        for (pattern, name, expected) in [
            ("*", "INBOX", true),
            ("*", "a/b/c", true),
            ("%", "a", true),
            ("%", "a/b", false),
            ("a/%", "a/b", true),
            ("a/%", "a/b/c", false),
            ("a/*", "a/b/c", true),
            ("inbox", "INBOX", true),
            ("Sent", "sent", false),
            ("%/%", "a/b", true),
            ("*b*", "abc", true),
            ("x*", "abc", false),
            ("", "", true),
        ] {
            assert_eq!(matches(pattern, name), expected, "{pattern} ~ {name}");
        }
    }
}
