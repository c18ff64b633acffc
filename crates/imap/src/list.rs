//! LIST patterns: `*` matches anything, `%` anything but the hierarchy delimiter.
//!
//! A pattern is compiled once per LIST: runs of wildcards collapse into one (`%*%*%*` is
//! `*`), and matching is dynamic programming over (pattern position, name position), never
//! backtracking, so one name costs at most the product of the two lengths, both bounded by
//! `mailbox_name_bytes_max` (the session refuses longer patterns).

/// A compiled LIST pattern.
pub(crate) struct Pattern {
    tokens: Vec<Token>,
    /// Characters of the name a match needs at least (the literal ones).
    literals: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// One character; `any_case` for the leading INBOX, which is case-insensitive.
    Literal { c: char, any_case: bool },
    /// `*`: any characters.
    Any,
    /// `%`: any characters but `/`.
    Level,
}

impl Pattern {
    pub(crate) fn new(pattern: &str) -> Self {
        let head: String = pattern.chars().take(5).collect();
        let inbox_prefix = head.eq_ignore_ascii_case("INBOX");
        let mut tokens: Vec<Token> = Vec::new();
        for (p, c) in pattern.chars().enumerate() {
            let token = match c {
                '*' => Token::Any,
                '%' => Token::Level,
                c => Token::Literal {
                    c,
                    any_case: inbox_prefix && p < 5,
                },
            };
            match (tokens.last_mut(), token) {
                // Two wildcards in a row match what the wider of them matches.
                (Some(last @ (Token::Any | Token::Level)), Token::Any | Token::Level) => {
                    if token == Token::Any {
                        *last = Token::Any;
                    }
                }
                _ => tokens.push(token),
            }
        }
        let literals = tokens
            .iter()
            .filter(|t| matches!(t, Token::Literal { .. }))
            .count();
        Self { tokens, literals }
    }

    /// The most steps matching one name of `chars` characters takes (the DP's cells).
    pub(crate) fn steps(&self, chars: usize) -> u64 {
        (self.tokens.len() as u64).saturating_mul(chars as u64 + 1)
    }
}

/// The most steps matching every pattern against every name may take, counted before any
/// matching (the session refuses a LIST past its bound).
pub(crate) fn match_steps<'a>(patterns: &[Pattern], names: impl Iterator<Item = &'a str>) -> u64 {
    names.fold(0u64, |sum, name| {
        let chars = name.chars().count();
        patterns
            .iter()
            .fold(sum, |sum, pattern| sum.saturating_add(pattern.steps(chars)))
    })
}

/// What a LIST or LSUB selects: every mailbox (plain LIST), the subscribed names (LIST
/// (SUBSCRIBED), LSUB), and with RECURSIVEMATCH their parents too.
#[derive(Clone, Copy)]
pub(crate) struct Selection {
    pub(crate) lsub: bool,
    pub(crate) subscribed: bool,
    pub(crate) recursive: bool,
}

/// One name of a LIST or LSUB answer.
pub(crate) struct Listed {
    pub(crate) name: String,
    /// `None`: no such mailbox: a subscribed name whose mailbox was deleted, or a parent of
    /// subscribed names (LIST: \NonExistent; LSUB: \Noselect unless subscribed itself).
    pub(crate) mailbox: Option<sealpost_storage::Mailbox>,
    pub(crate) has_children: bool,
    pub(crate) subscribed: bool,
    /// LSUB: not subscribed, listed for a subscribed name below it that the pattern does not
    /// reach (\Noselect, RFC 3501 6.3.9).
    pub(crate) lsub_parent: bool,
    /// RECURSIVEMATCH: a subscribed name is below it (CHILDINFO ("SUBSCRIBED"), RFC 5258
    /// 3.5).
    pub(crate) child_subscribed: bool,
}

/// The names of every level above `name` (`a/b/c`: `a`, `a/b`).
pub(crate) fn parents(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('/').map(move |(at, _)| &name[..at])
}

/// The names a LIST or LSUB answers with, sorted by name: the mailboxes, the levels above
/// them that are no mailbox (a deleted parent's children stay), and `lost` (the subscribed
/// names whose mailbox was deleted), as `selection` and `patterns` select them.
pub(crate) fn select(
    mailboxes: Vec<sealpost_storage::Mailbox>,
    lost: &[String],
    patterns: &[Pattern],
    selection: Selection,
) -> Vec<Listed> {
    use std::collections::{BTreeMap, HashSet};
    let matched = |name: &str| patterns.iter().any(|pattern| pattern.matches(name));
    let mut with_children: HashSet<String> = HashSet::new();
    for mailbox in &mailboxes {
        with_children.extend(parents(&mailbox.name).map(str::to_string));
    }
    let mut all: BTreeMap<String, Option<sealpost_storage::Mailbox>> = mailboxes
        .into_iter()
        .map(|m| (m.name.clone(), Some(m)))
        .collect();
    if !(selection.lsub || selection.subscribed) {
        // A level with no mailbox of its own is listed \Noselect (RFC 3501 6.3.4, 6.3.8).
        for parent in &with_children {
            all.entry(parent.clone()).or_insert(None);
        }
        return all
            .into_iter()
            .filter(|(name, _)| matched(name))
            .map(|(name, mailbox)| Listed {
                has_children: with_children.contains(&name),
                subscribed: mailbox.as_ref().is_some_and(|m| m.subscribed),
                name,
                mailbox,
                lsub_parent: false,
                child_subscribed: false,
            })
            .collect();
    }
    for name in lost {
        all.entry(name.clone()).or_insert(None);
    }
    let subscribed: Vec<String> = all
        .iter()
        .filter(|(_, mailbox)| mailbox.as_ref().is_none_or(|m| m.subscribed))
        .map(|(name, _)| name.clone())
        .collect();
    let is_subscribed = |name: &str| {
        subscribed
            .binary_search_by(|s| s.as_str().cmp(name))
            .is_ok()
    };
    // Levels above a subscribed name; of those, the ones above a subscribed name the patterns
    // miss (RFC 5258 3.5: a parent that is not itself selected comes with CHILDINFO only for
    // a child that is not listed anyway); and LSUB's \Noselect parents (RFC 3501 6.3.9).
    let mut above_subscribed: HashSet<String> = HashSet::new();
    let mut above_unlisted: HashSet<String> = HashSet::new();
    let mut lsub_parents: HashSet<String> = HashSet::new();
    for name in &subscribed {
        // Each name matched once per pattern, each of its levels once per pattern that misses
        // the name: the work match_steps counted (the name and every level above it).
        let missing: Vec<&Pattern> = patterns.iter().filter(|p| !p.matches(name)).collect();
        let listed = missing.len() < patterns.len();
        for parent in parents(name) {
            above_subscribed.insert(parent.to_string());
            if !listed {
                above_unlisted.insert(parent.to_string());
            }
            // LSUB "" "%" with only "a/b" subscribed answers "a" as \Noselect.
            if selection.lsub
                && !missing.is_empty()
                && !is_subscribed(parent)
                && missing.iter().any(|p| p.matches(parent))
            {
                lsub_parents.insert(parent.to_string());
            }
        }
    }
    for parent in above_subscribed.iter().chain(&lsub_parents) {
        all.entry(parent.clone()).or_insert(None);
    }
    all.into_iter()
        .filter_map(|(name, mailbox)| {
            let subscribed = is_subscribed(&name);
            let lsub_parent = lsub_parents.contains(&name) && !subscribed;
            let child_subscribed = selection.recursive
                && if subscribed {
                    above_subscribed.contains(&name)
                } else {
                    above_unlisted.contains(&name)
                };
            let wanted = subscribed || lsub_parent || child_subscribed;
            (wanted && matched(&name)).then(|| Listed {
                has_children: with_children.contains(&name),
                name,
                mailbox,
                subscribed,
                lsub_parent,
                child_subscribed,
            })
        })
        .collect()
}

impl Pattern {
    /// Whether `name` matches.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        if name.len() < self.literals {
            return false;
        }
        // reachable[n]: the pattern so far can match the first n characters of the name.
        let mut reachable = vec![false; name.len() + 1];
        let mut next = vec![false; name.len() + 1];
        reachable[0] = true;
        for token in &self.tokens {
            match *token {
                Token::Any | Token::Level => {
                    let mut open = false;
                    for n in 0..=name.len() {
                        if reachable[n] {
                            open = true;
                        }
                        next[n] = open;
                        if *token == Token::Level && name.get(n) == Some(&'/') {
                            open = false;
                        }
                    }
                }
                Token::Literal { c, any_case } => {
                    next[0] = false;
                    for n in 0..name.len() {
                        let equal = if any_case {
                            name[n].eq_ignore_ascii_case(&c)
                        } else {
                            name[n] == c
                        };
                        next[n + 1] = reachable[n] && equal;
                    }
                }
            }
            std::mem::swap(&mut reachable, &mut next);
            if !reachable.contains(&true) {
                return false;
            }
        }
        reachable[name.len()]
    }
}

/// Whether `name` matches `pattern`.
#[cfg(test)]
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    Pattern::new(pattern).matches(name)
}

#[cfg(test)]
mod tests {
    use super::{match_steps, matches, select, Pattern, Selection};

    fn mailbox(name: &str, subscribed: bool) -> sealpost_storage::Mailbox {
        sealpost_storage::Mailbox {
            id: sealpost_storage::MailboxId(1),
            name: name.to_string(),
            special_use: None,
            subscribed,
            read_only: false,
            uid_validity: 1,
            uid_next: 1,
            highest_modseq: 1,
            messages: 0,
            unseen: 0,
            bytes: 0,
        }
    }

    /// (name, exists, subscribed, LSUB \Noselect parent, CHILDINFO) of each line.
    fn answer(pattern: &str, selection: Selection) -> Vec<(String, bool, bool, bool, bool)> {
        // "a" exists with a subscribed child; "gone/x" was deleted while subscribed; "p/q"
        // lost its parent "p" to a DELETE.
        let mailboxes = vec![
            mailbox("a", false),
            mailbox("a/b", true),
            mailbox("a/c", false),
            mailbox("p/q", false),
        ];
        select(
            mailboxes,
            &["gone/x".to_string()],
            &[Pattern::new(pattern)],
            selection,
        )
        .into_iter()
        .map(|l| {
            (
                l.name,
                l.mailbox.is_some(),
                l.subscribed,
                l.lsub_parent,
                l.child_subscribed,
            )
        })
        .collect()
    }

    const PLAIN: Selection = Selection {
        lsub: false,
        subscribed: false,
        recursive: false,
    };
    const SUBSCRIBED: Selection = Selection {
        lsub: false,
        subscribed: true,
        recursive: false,
    };
    const RECURSIVE: Selection = Selection {
        lsub: false,
        subscribed: true,
        recursive: true,
    };
    const LSUB: Selection = Selection {
        lsub: true,
        subscribed: false,
        recursive: false,
    };

    fn line(
        name: &str,
        exists: bool,
        subscribed: bool,
        noselect: bool,
        childinfo: bool,
    ) -> (String, bool, bool, bool, bool) {
        (name.to_string(), exists, subscribed, noselect, childinfo)
    }

    #[test]
    fn subscriptions_and_levels_are_selected_as_rfc_3501_and_5258_say() {
        // Plain LIST: the mailboxes and the level of a deleted parent, never a lost name.
        assert_eq!(
            answer("%", PLAIN),
            vec![
                line("a", true, false, false, false),
                line("p", false, false, false, false)
            ]
        );
        // LIST (SUBSCRIBED): the subscribed names, a deleted one too.
        assert_eq!(
            answer("*", SUBSCRIBED),
            vec![
                line("a/b", true, true, false, false),
                line("gone/x", false, true, false, false)
            ]
        );
        // RECURSIVEMATCH with "%": the parents of subscribed names the pattern misses, with
        // CHILDINFO, whether they exist or not.
        assert_eq!(
            answer("%", RECURSIVE),
            vec![
                line("a", true, false, false, true),
                line("gone", false, false, false, true)
            ]
        );
        // With "*" the subscribed children are listed themselves: no parent (RFC 5258 3.5).
        assert_eq!(
            answer("*", RECURSIVE),
            vec![
                line("a/b", true, true, false, false),
                line("gone/x", false, true, false, false)
            ]
        );
        // LSUB "%": the unsubscribed parents as \Noselect (RFC 3501 6.3.9); LSUB "a/%": the
        // child itself.
        assert_eq!(
            answer("%", LSUB),
            vec![
                line("a", true, false, true, false),
                line("gone", false, false, true, false)
            ]
        );
        assert_eq!(
            answer("a/%", LSUB),
            vec![line("a/b", true, true, false, false)]
        );
    }

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
            ("", "a", false),
            ("%*", "a/b", true),
            ("*%", "a/b", true),
            ("%%", "a/b", false),
            ("%%/%", "a/b", true),
            ("Inbox/%", "INBOX/x", true),
            ("INBOX/X", "INBOX/x", false),
            ("a*%*%b", "a/x/b", true),
            ("a%%%b", "a/b", false),
        ] {
            assert_eq!(matches(pattern, name), expected, "{pattern} ~ {name}");
        }
    }

    #[test]
    fn the_work_of_a_list_is_counted_before_it_is_done() {
        use crate::session::LIST_MATCH_STEPS_MAX;
        // The attack: a thousand patterns that do not collapse, over ten thousand folders
        // with names at the 1,000-byte bound.
        let hostile: Vec<Pattern> = (0..1_000)
            .map(|_| Pattern::new(&"a%".repeat(500)))
            .collect();
        let long = "a".repeat(1_000);
        let steps = match_steps(&hostile, std::iter::repeat_n(long.as_str(), 10_000));
        assert!(steps > LIST_MATCH_STEPS_MAX * 10_000, "{steps}");
        // What clients send: a few patterns over ten thousand ordinary folders.
        let usual: Vec<Pattern> = ["*", "%", "INBOX", "Archive/2026/%"]
            .iter()
            .map(|p| Pattern::new(p))
            .collect();
        let names: Vec<String> = (0..10_000)
            .map(|i| format!("Archive/2026/Patient files {i}"))
            .collect();
        let steps = match_steps(&usual, names.iter().map(String::as_str));
        assert!(steps < LIST_MATCH_STEPS_MAX / 10, "{steps}");
    }

    #[test]
    fn wildcard_runs_collapse_and_a_pathological_pattern_matches_in_bounded_steps() {
        // 1,000 characters of alternating wildcards are one `*`, one `%` when all are `%`.
        let wild = "%*".repeat(500);
        assert_eq!(Pattern::new(&wild).tokens, vec![super::Token::Any]);
        assert_eq!(
            Pattern::new(&"%".repeat(1000)).tokens,
            vec![super::Token::Level]
        );
        // Against a name of 1,000 characters: a match and a near miss, each at most
        // 1,000 x 1,000 steps (the old recursion-free table was bounded too, but kept the
        // 1,000 wildcards as 1,000 rows).
        let name = "a".repeat(999) + "b";
        let pattern = "a%".repeat(499) + "b";
        assert!(matches(&pattern, &name));
        assert!(!matches(&(pattern.clone() + "c"), &name));
        assert!(matches(&(wild.clone() + "b"), &name));
        assert!(!matches(&(wild + "c"), &name));
        // More literal characters than the name has: no table at all.
        assert!(!matches(&"a".repeat(1001), &name));
    }
}
