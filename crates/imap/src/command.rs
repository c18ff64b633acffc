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
    Ranges(Vec<(SeqNumber, SeqNumber)>),
    Saved,
}

impl SequenceSet {
    /// Each range as (low, high), with `*` standing for `largest`; none for `$`.
    pub(crate) fn ranges(&self, largest: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        let ranges = match self {
            SequenceSet::Ranges(ranges) => ranges.as_slice(),
            SequenceSet::Saved => &[],
        };
        ranges.iter().map(move |(a, b)| {
            let value = |n: &SeqNumber| match n {
                SeqNumber::Value(v) => *v,
                SeqNumber::Largest => largest,
            };
            (value(a).min(value(b)), value(a).max(value(b)))
        })
    }
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
