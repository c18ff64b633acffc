//! What clients ask: every IMAP4rev2/IMAP4rev1 command Sealpost understands, parsed.

/// A parsed command: its tag and what it asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Command {
    pub(crate) tag: String,
    pub(crate) body: CommandBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CommandBody {
    Capability,
    Noop,
    Logout,
    StartTls,
    Authenticate {
        mechanism: String,
        initial_response: Option<Vec<u8>>,
    },
    Login {
        user: String,
        password: String,
    },
    Enable(Vec<String>),
    Id,
    Namespace,
    Select {
        mailbox: String,
        read_only: bool,
        condstore: bool,
        qresync: Option<Qresync>,
    },
    Create {
        mailbox: String,
        special_use: Vec<String>,
    },
    Delete {
        mailbox: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Subscribe {
        mailbox: String,
    },
    Unsubscribe {
        mailbox: String,
    },
    List(List),
    Status {
        mailbox: String,
        items: Vec<StatusItem>,
    },
    Append {
        mailbox: String,
        flags: Vec<String>,
        date: Option<ImapDate>,
        message: Vec<u8>,
    },
    Idle,
    Check,
    Close,
    Unselect,
    Expunge {
        uids: Option<SequenceSet>,
    },
    Search {
        uid: bool,
        returns: Option<Vec<SearchReturn>>,
        /// As the client named it; anything but UTF-8 and US-ASCII gets NO [BADCHARSET].
        charset: Option<String>,
        criteria: SearchKey,
    },
    Fetch {
        uid: bool,
        set: SequenceSet,
        items: Vec<FetchItem>,
        changed_since: Option<u64>,
        vanished: bool,
    },
    Store {
        uid: bool,
        set: SequenceSet,
        mode: StoreMode,
        silent: bool,
        flags: Vec<String>,
        unchanged_since: Option<u64>,
    },
    Copy {
        uid: bool,
        set: SequenceSet,
        mailbox: String,
    },
    Move {
        uid: bool,
        set: SequenceSet,
        mailbox: String,
    },
    GetQuota {
        root: String,
    },
    GetQuotaRoot {
        mailbox: String,
    },
    SetQuota,
    Compress {
        mechanism: String,
    },
}

/// SELECT (QRESYNC (uidvalidity modseq [known-uids])).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Qresync {
    pub(crate) uid_validity: u32,
    pub(crate) modseq: u64,
    pub(crate) known_uids: Option<SequenceSet>,
}

/// LIST and LSUB, with RFC 5258 selection and return options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct List {
    pub(crate) lsub: bool,
    pub(crate) reference: String,
    pub(crate) patterns: Vec<String>,
    pub(crate) select_subscribed: bool,
    pub(crate) select_special_use: bool,
    pub(crate) recursive_match: bool,
    pub(crate) return_subscribed: bool,
    pub(crate) return_children: bool,
    pub(crate) return_special_use: bool,
    pub(crate) return_status: Option<Vec<StatusItem>>,
    /// The command used any extended syntax (RFC 5258 replies then differ slightly).
    pub(crate) extended: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
    Deleted,
    Size,
    HighestModSeq,
}

/// A day and time as APPEND and SEARCH give them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ImapDate {
    /// Seconds since the epoch, UTC.
    pub(crate) unix_seconds: i64,
    pub(crate) offset_minutes: i16,
}

/// One number of a sequence set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SeqNumber {
    Value(u32),
    /// `*`: the largest number in use.
    Largest,
}

/// A sequence set: ranges, or `$` (the saved search result, RFC 5182).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SequenceSet {
    Ranges(Ranges),
    Saved,
}

/// The ranges of a sequence set, kept so that however often they overlap and however far
/// they reach, asking whether a number is in them costs O(log ranges) and listing what they
/// name in a mailbox costs O(ranges + messages named): nothing is ever expanded number by
/// number. Ranges without `*` are sorted and merged when parsed. Every range with `*`
/// contains the largest number, so together they are one range, kept as the least and the
/// greatest of their other ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ranges {
    /// (low, high), both included: sorted, disjoint and not touching.
    fixed: Vec<(u32, u32)>,
    /// Of the ranges with `*`: the least and the greatest other end (`*` alone and `*:*`
    /// add `u32::MAX` and 0, so they name the largest number only).
    star: Option<(u32, u32)>,
}

impl Ranges {
    /// The ranges as parsed, in any order and overlapping.
    pub(crate) fn new(parsed: impl IntoIterator<Item = (SeqNumber, SeqNumber)>) -> Self {
        let mut fixed = Vec::new();
        let mut star: Option<(u32, u32)> = None;
        for pair in parsed {
            match pair {
                (SeqNumber::Value(a), SeqNumber::Value(b)) => fixed.push((a.min(b), a.max(b))),
                (SeqNumber::Value(end), SeqNumber::Largest)
                | (SeqNumber::Largest, SeqNumber::Value(end)) => {
                    let (low, high) = star.unwrap_or((u32::MAX, 0));
                    star = Some((low.min(end), high.max(end)));
                }
                (SeqNumber::Largest, SeqNumber::Largest) => {
                    star = Some(star.unwrap_or((u32::MAX, 0)));
                }
            }
        }
        Self {
            fixed: merge(fixed),
            star,
        }
    }

    /// Whether `number` is named, `*` standing for `largest`.
    pub(crate) fn contains(&self, number: u32, largest: u32) -> bool {
        if let Some((low, high)) = self.star_range(largest) {
            if (low..=high).contains(&number) {
                return true;
            }
        }
        let after = self.fixed.partition_point(|(low, _)| *low <= number);
        after > 0
            && self
                .fixed
                .get(after - 1)
                .is_some_and(|(_, high)| number <= *high)
    }

    /// What the ranges name with `*` standing for `largest`, clipped to `1..=limit` (numbers
    /// past `limit`, the mailbox's last, name nothing): sorted, disjoint ranges, at most one
    /// more than were parsed.
    pub(crate) fn bound(&self, largest: u32, limit: u32) -> Vec<(u32, u32)> {
        let mut ranges = self.fixed.clone();
        if let Some(star) = self.star_range(largest) {
            let at = ranges.partition_point(|range| *range < star);
            ranges.insert(at, star);
            ranges = merge(ranges);
        }
        ranges
            .into_iter()
            .filter(|(low, _)| *low <= limit)
            .map(|(low, high)| (low.max(1), high.min(limit)))
            .filter(|(low, high)| low <= high)
            .collect()
    }

    /// The greatest number written in the set (not `*`), if any: message sequence numbers
    /// past the last message are an error.
    pub(crate) fn greatest_written(&self) -> Option<u32> {
        let fixed = self.fixed.last().map(|(_, high)| *high);
        let star = self.star.map(|(_, high)| high).filter(|high| *high > 0);
        fixed.max(star)
    }

    /// Whether some range has `*`.
    pub(crate) fn has_star(&self) -> bool {
        self.star.is_some()
    }

    fn star_range(&self, largest: u32) -> Option<(u32, u32)> {
        self.star
            .map(|(low, high)| (low.min(largest), high.max(largest)))
    }
}

/// Sorts ranges and merges those that overlap or touch.
fn merge(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (low, high) in ranges {
        match merged.last_mut() {
            Some(last) if low <= last.1.saturating_add(1) => last.1 = last.1.max(high),
            _ => merged.push((low, high)),
        }
    }
    merged
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SearchReturn {
    Min,
    Max,
    All,
    Count,
    Save,
}

/// A search key; nesting (NOT, OR, parentheses) is bounded by the parser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SearchKey {
    And(Vec<SearchKey>),
    Or(Box<SearchKey>, Box<SearchKey>),
    Not(Box<SearchKey>),
    All,
    Flag { flag: String, set: bool },
    New,
    Old,
    Recent,
    Header { field: String, value: String },
    Body(String),
    Text(String),
    Before(i64),
    On(i64),
    Since(i64),
    SentBefore(i64),
    SentOn(i64),
    SentSince(i64),
    Larger(u64),
    Smaller(u64),
    Uid(SequenceSet),
    Sequence(SequenceSet),
    ModSeq(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreMode {
    Replace,
    Add,
    Remove,
}

/// A FETCH data item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FetchItem {
    Flags,
    InternalDate,
    Rfc822Size,
    Envelope,
    BodyStructure,
    /// `BODY` without a section: the non-extensible body structure.
    Body,
    Uid,
    ModSeq,
    /// `RFC822` (= BODY[]), `RFC822.HEADER` (= BODY.PEEK[HEADER]), `RFC822.TEXT` (= BODY[TEXT]).
    Rfc822,
    Rfc822Header,
    Rfc822Text,
    Section {
        peek: bool,
        section: Section,
        partial: Option<(u64, u64)>,
    },
    Binary {
        peek: bool,
        path: Vec<u32>,
        partial: Option<(u64, u64)>,
    },
    BinarySize {
        path: Vec<u32>,
    },
}

/// A body section: part path, then which text of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Section {
    pub(crate) path: Vec<u32>,
    pub(crate) text: Option<SectionText>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SectionText {
    Header,
    HeaderFields { fields: Vec<String>, not: bool },
    Text,
    Mime,
}

impl CommandBody {
    /// The command's name, for metrics (never its arguments).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            CommandBody::Capability => "CAPABILITY",
            CommandBody::Noop => "NOOP",
            CommandBody::Logout => "LOGOUT",
            CommandBody::StartTls => "STARTTLS",
            CommandBody::Authenticate { .. } => "AUTHENTICATE",
            CommandBody::Login { .. } => "LOGIN",
            CommandBody::Enable { .. } => "ENABLE",
            CommandBody::Id => "ID",
            CommandBody::Namespace => "NAMESPACE",
            CommandBody::Select { .. } => "SELECT",
            CommandBody::Create { .. } => "CREATE",
            CommandBody::Delete { .. } => "DELETE",
            CommandBody::Rename { .. } => "RENAME",
            CommandBody::Subscribe { .. } => "SUBSCRIBE",
            CommandBody::Unsubscribe { .. } => "UNSUBSCRIBE",
            CommandBody::List { .. } => "LIST",
            CommandBody::Status { .. } => "STATUS",
            CommandBody::Append { .. } => "APPEND",
            CommandBody::Idle => "IDLE",
            CommandBody::Check => "CHECK",
            CommandBody::Close => "CLOSE",
            CommandBody::Unselect => "UNSELECT",
            CommandBody::Expunge { .. } => "EXPUNGE",
            CommandBody::Search { .. } => "SEARCH",
            CommandBody::Fetch { .. } => "FETCH",
            CommandBody::Store { .. } => "STORE",
            CommandBody::Copy { .. } => "COPY",
            CommandBody::Move { .. } => "MOVE",
            CommandBody::GetQuota { .. } => "GETQUOTA",
            CommandBody::GetQuotaRoot { .. } => "GETQUOTAROOT",
            CommandBody::SetQuota => "SETQUOTA",
            CommandBody::Compress { .. } => "COMPRESS",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Ranges, SeqNumber};

    const STAR: SeqNumber = SeqNumber::Largest;

    fn v(n: u32) -> SeqNumber {
        SeqNumber::Value(n)
    }

    #[test]
    fn ranges_merge_when_parsed_and_star_ranges_become_one() {
        let set = Ranges::new([
            (v(7), v(3)),
            (v(1), v(2)),
            (v(10), v(12)),
            (v(11), v(11)),
            (v(20), v(20)),
        ]);
        // 1:2 and 3:7 touch: one range.
        assert_eq!(set.bound(0, u32::MAX), vec![(1, 7), (10, 12), (20, 20)]);
        // Clipped to the mailbox: past the last number, nothing.
        assert_eq!(set.bound(0, 11), vec![(1, 7), (10, 11)]);
        assert_eq!(set.greatest_written(), Some(20));
        // `*` is the largest number; `5:*` past it is `largest:5`; `*` alone is `largest`.
        let stars = Ranges::new([(v(5), STAR), (STAR, v(9)), (STAR, STAR)]);
        assert_eq!(stars.bound(3, 100), vec![(3, 9)]);
        assert_eq!(stars.bound(50, 100), vec![(5, 50)]);
        assert!(stars.contains(50, 50) && !stars.contains(51, 50) && !stars.contains(4, 50));
        let alone = Ranges::new([(STAR, STAR)]);
        assert_eq!(alone.bound(8, 8), vec![(8, 8)]);
        assert_eq!(alone.greatest_written(), None);
        assert!(alone.has_star() && !set.has_star());
        // A star range joins the fixed ones it overlaps.
        let mixed = Ranges::new([(v(1), v(4)), (v(6), STAR), (v(30), v(40))]);
        assert_eq!(mixed.bound(35, 1000), vec![(1, 4), (6, 40)]);
        assert_eq!(mixed.bound(35, 20), vec![(1, 4), (6, 20)]);
        for (number, named) in [
            (0, false),
            (1, true),
            (4, true),
            (5, false),
            (6, true),
            (40, true),
            (41, false),
        ] {
            assert_eq!(mixed.contains(number, 35), named, "{number}");
        }
    }

    #[test]
    fn overlapping_ranges_keep_one_entry_however_many_were_written() {
        let widest = Ranges::new(vec![(v(1), v(u32::MAX)); 10_000]);
        assert_eq!(widest.bound(0, u32::MAX), vec![(1, u32::MAX)]);
        assert!(widest.contains(u32::MAX, 0) && widest.contains(1, 0));
        let stars = Ranges::new(vec![(v(1), STAR); 10_000]);
        assert_eq!(stars.bound(u32::MAX, u32::MAX), vec![(1, u32::MAX)]);
        assert_eq!(stars.bound(10, 10), vec![(1, 10)]);
    }
}
