//! The IMAP command grammar (RFC 9051, RFC 3501 and the extensions Sealpost advertises),
//! over one framed command. Nesting (search keys, ID lists) is bounded by [`NESTING_DEPTH_MAX`].

use crate::command::*;
use crate::utf7;

/// Deepest nesting of parentheses, NOT and OR accepted in a command.
pub(crate) const NESTING_DEPTH_MAX: usize = 32;
/// Most items in one list (fetch items, flags, patterns, search keys at one level).
pub(crate) const LIST_ITEMS_MAX: usize = 1_000;
/// Most ranges in one sequence set (within a 64 KiB line, `1,1,1,...` could give 32,000).
/// Overlaps cost nothing past parsing: the ranges are sorted and merged once.
pub(crate) const SEQUENCE_SET_RANGES_MAX: usize = 10_000;

/// A command that does not parse: answered `BAD`, with the tag when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) tag: Option<String>,
    pub(crate) message: String,
}

/// How names on the wire are encoded: modified UTF-7 for IMAP4rev1, UTF-8 once IMAP4rev2 or
/// UTF8=ACCEPT is enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NameEncoding {
    Utf7,
    Utf8,
}

pub(crate) fn parse_command(bytes: &[u8], names: NameEncoding) -> Result<Command, ParseError> {
    let mut cursor = Cursor {
        bytes,
        at: 0,
        names,
    };
    let tag = cursor.tag().ok_or_else(|| ParseError {
        tag: None,
        message: "a command starts with a tag".into(),
    })?;
    let body = cursor.command_body().map_err(|message| ParseError {
        tag: Some(tag.clone()),
        message,
    })?;
    Ok(Command { tag, body })
}

type Parsed<T> = Result<T, String>;

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    names: NameEncoding,
}

fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7F && !b"(){ %*\"\\]".contains(&b)
}

fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

fn is_list_char(b: u8) -> bool {
    is_astring_char(b) || b == b'%' || b == b'*'
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// Whether a string starts here: a quoted string, a literal, or a literal8 (`~{`). A `~`
    /// not followed by `{` is an ATOM-CHAR like any other (`SELECT ~foo`).
    fn at_string(&self) -> bool {
        match self.peek() {
            Some(b'"') | Some(b'{') => true,
            Some(b'~') => self.bytes.get(self.at + 1) == Some(&b'{'),
            _ => false,
        }
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at.min(self.bytes.len())..]
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.at += 1;
            return true;
        }
        false
    }

    fn expect(&mut self, b: u8, what: &str) -> Parsed<()> {
        if self.eat(b) {
            return Ok(());
        }
        Err(format!("expected {what}"))
    }

    fn sp(&mut self) -> Parsed<()> {
        self.expect(b' ', "a space")
    }

    /// Eats `word` (ASCII case-insensitive) when it is next and ends there.
    fn keyword(&mut self, word: &str) -> bool {
        let rest = self.rest();
        let n = word.len();
        let matches = rest.len() >= n
            && rest[..n].eq_ignore_ascii_case(word.as_bytes())
            && rest
                .get(n)
                .is_none_or(|&b| !is_atom_char(b) || b == b'[' && word.ends_with('['));
        if matches {
            self.at += n;
        }
        matches
    }

    fn at_end(&mut self) -> bool {
        let rest = self.rest();
        rest == b"\r\n" || rest == b"\n" || rest.is_empty()
    }

    fn end(&mut self) -> Parsed<()> {
        if self.at_end() {
            return Ok(());
        }
        Err(format!(
            "unexpected text: {}",
            String::from_utf8_lossy(&self.rest()[..self.rest().len().min(30)]).trim_end()
        ))
    }

    fn tag(&mut self) -> Option<String> {
        let start = self.at;
        while self.peek().is_some_and(|b| is_astring_char(b) && b != b'+') {
            self.at += 1;
        }
        if self.at == start || self.at - start > 64 {
            return None;
        }
        let tag = String::from_utf8_lossy(&self.bytes[start..self.at]).to_string();
        self.sp().ok()?;
        Some(tag)
    }

    fn atom(&mut self) -> Parsed<String> {
        let start = self.at;
        while self.peek().is_some_and(is_atom_char) {
            self.at += 1;
        }
        if self.at == start {
            return Err("expected an atom".into());
        }
        Ok(String::from_utf8_lossy(&self.bytes[start..self.at]).to_string())
    }

    fn number(&mut self) -> Parsed<u64> {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        let digits = std::str::from_utf8(&self.bytes[start..self.at]).unwrap_or("");
        digits
            .parse::<u64>()
            .map_err(|_| "expected a number".to_string())
    }

    fn number32(&mut self) -> Parsed<u32> {
        u32::try_from(self.number()?).map_err(|_| "a number over 4294967295".to_string())
    }

    fn nz_number(&mut self) -> Parsed<u32> {
        match self.number32()? {
            0 => Err("0 is not a valid number here".into()),
            n => Ok(n),
        }
    }

    fn quoted(&mut self) -> Parsed<Vec<u8>> {
        self.expect(b'"', "a quoted string")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\r') | Some(b'\n') => return Err("unterminated quoted string".into()),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(b @ (b'"' | b'\\')) => {
                            out.push(b);
                            self.at += 1;
                        }
                        _ => return Err("bad escape in a quoted string".into()),
                    }
                }
                Some(b) => {
                    out.push(b);
                    self.at += 1;
                }
            }
        }
    }

    fn literal(&mut self) -> Parsed<Vec<u8>> {
        self.eat(b'~');
        self.expect(b'{', "a literal")?;
        let size = usize::try_from(self.number()?).map_err(|_| "literal too large")?;
        if !self.eat(b'+') {
            self.eat(b'-');
        }
        self.expect(b'}', "} after the literal size")?;
        self.eat(b'\r');
        self.expect(b'\n', "a line break after the literal size")?;
        let end = self
            .at
            .checked_add(size)
            .filter(|end| *end <= self.bytes.len())
            .ok_or("literal shorter than announced")?;
        let data = self.bytes[self.at..end].to_vec();
        self.at = end;
        Ok(data)
    }

    fn string(&mut self) -> Parsed<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') | Some(b'~') => self.literal(),
            _ => Err("expected a string".into()),
        }
    }

    fn astring_bytes(&mut self) -> Parsed<Vec<u8>> {
        match self.at_string() {
            true => self.string(),
            false => {
                let start = self.at;
                while self.peek().is_some_and(is_astring_char) {
                    self.at += 1;
                }
                if self.at == start {
                    return Err("expected an atom or a string".into());
                }
                Ok(self.bytes[start..self.at].to_vec())
            }
        }
    }

    fn astring(&mut self) -> Parsed<String> {
        let bytes = self.astring_bytes()?;
        String::from_utf8(bytes).map_err(|_| "a string that is not UTF-8".to_string())
    }

    fn mailbox(&mut self) -> Parsed<String> {
        let raw = self.astring()?;
        self.decode_name(&raw)
    }

    fn decode_name(&self, raw: &str) -> Parsed<String> {
        let name = match self.names {
            NameEncoding::Utf8 => raw.to_string(),
            NameEncoding::Utf7 => {
                utf7::decode(raw).ok_or("a mailbox name in invalid modified UTF-7")?
            }
        };
        if name.eq_ignore_ascii_case("INBOX") {
            return Ok("INBOX".into());
        }
        Ok(name)
    }

    fn list_mailbox(&mut self) -> Parsed<String> {
        let raw = match self.at_string() {
            true => String::from_utf8(self.string()?)
                .map_err(|_| "a pattern that is not UTF-8".to_string())?,
            false => {
                let start = self.at;
                while self.peek().is_some_and(is_list_char) {
                    self.at += 1;
                }
                if self.at == start {
                    return Err("expected a mailbox pattern".into());
                }
                String::from_utf8_lossy(&self.bytes[start..self.at]).to_string()
            }
        };
        match self.names {
            NameEncoding::Utf8 => Ok(raw),
            NameEncoding::Utf7 => {
                utf7::decode(&raw).ok_or_else(|| "a pattern in invalid modified UTF-7".to_string())
            }
        }
    }

    /// `( item *(SP item) )` with a parser for one item; empty lists allowed where `empty_ok`.
    fn paren_list<T>(
        &mut self,
        empty_ok: bool,
        mut item: impl FnMut(&mut Self) -> Parsed<T>,
    ) -> Parsed<Vec<T>> {
        self.expect(b'(', "(")?;
        let mut out = Vec::new();
        if self.eat(b')') {
            return if empty_ok {
                Ok(out)
            } else {
                Err("an empty list".into())
            };
        }
        loop {
            if out.len() >= LIST_ITEMS_MAX {
                return Err(format!("more than {LIST_ITEMS_MAX} items in a list"));
            }
            out.push(item(self)?);
            if self.eat(b')') {
                return Ok(out);
            }
            self.sp()?;
        }
    }

    fn flag(&mut self) -> Parsed<String> {
        if self.eat(b'\\') {
            if self.eat(b'*') {
                return Ok("\\*".into());
            }
            return Ok(format!("\\{}", self.atom()?));
        }
        self.atom()
    }

    fn flag_list(&mut self) -> Parsed<Vec<String>> {
        self.paren_list(true, Self::flag)
    }

    fn seq_number(&mut self) -> Parsed<SeqNumber> {
        if self.eat(b'*') {
            return Ok(SeqNumber::Largest);
        }
        Ok(SeqNumber::Value(self.nz_number()?))
    }

    fn sequence_set(&mut self) -> Parsed<SequenceSet> {
        if self.eat(b'$') {
            return Ok(SequenceSet::Saved);
        }
        let mut ranges = Vec::new();
        loop {
            if ranges.len() >= SEQUENCE_SET_RANGES_MAX {
                return Err(format!(
                    "[LIMIT] a sequence set of more than {SEQUENCE_SET_RANGES_MAX} ranges"
                ));
            }
            let first = self.seq_number()?;
            let last = if self.eat(b':') {
                self.seq_number()?
            } else {
                first
            };
            ranges.push((first, last));
            if !self.eat(b',') {
                return Ok(SequenceSet::Ranges(Ranges::new(ranges)));
            }
        }
    }

    /// A QRESYNC known-uids set (RFC 7162 section 7, `sequence-set` without `*`, and not `$`).
    fn known_uid_set(&mut self) -> Parsed<SequenceSet> {
        let token = &self.bytes[self.at..];
        let token = &token[..token
            .iter()
            .position(|&b| b == b' ' || b == b')')
            .unwrap_or(token.len())];
        if token.iter().any(|&b| b == b'*' || b == b'$') {
            return Err("known UIDs are numbers and ranges, without * or $ (RFC 7162)".into());
        }
        self.sequence_set()
    }

    /// Skips QRESYNC's sequence match data after checking its syntax (`known-sequence-set SP
    /// known-uid-set` inside the parentheses: numbers, `:` and `,`), however long: it is a
    /// hint Sealpost does not need (the store keeps every expunged UID), and RFC 7162 section
    /// 3.2.5.2 lets a server ignore it.
    fn skip_seq_match_data(&mut self) -> Parsed<()> {
        self.expect(b'(', "(")?;
        for last in [false, true] {
            let set = self.take_while(|b| b.is_ascii_digit() || b == b':' || b == b',');
            let well_formed = !set.is_empty()
                && set.split(',').all(|range| {
                    range.split(':').count() <= 2
                        && range
                            .split(':')
                            .all(|n| n.parse::<u32>().is_ok_and(|n| n > 0))
                });
            if !well_formed {
                return Err(
                    "sequence match data is two sets of numbers and ranges (RFC 7162)".into(),
                );
            }
            if !last {
                self.sp()?;
            }
        }
        self.expect(b')', ")")
    }

    /// `dd-Mon-yyyy`, quoted or not, as the start of that day in UTC.
    fn date(&mut self) -> Parsed<i64> {
        let quoted = self.eat(b'"');
        let text = self.take_while(|b| b.is_ascii_alphanumeric() || b == b'-');
        if quoted {
            self.expect(b'"', "the closing quote of a date")?;
        }
        parse_day(&text).ok_or_else(|| format!("not a date: {text}"))
    }

    /// `"dd-Mon-yyyy hh:mm:ss +zzzz"` (APPEND).
    fn date_time(&mut self) -> Parsed<ImapDate> {
        let text = String::from_utf8(self.quoted()?).map_err(|_| "not a date-time")?;
        parse_date_time(&text).ok_or_else(|| format!("not a date-time: {text}"))
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> String {
        let start = self.at;
        while self.peek().is_some_and(&f) {
            self.at += 1;
        }
        String::from_utf8_lossy(&self.bytes[start..self.at]).to_string()
    }

    fn command_body(&mut self) -> Parsed<CommandBody> {
        let name = self.atom()?.to_ascii_uppercase();
        let body = match name.as_str() {
            "CAPABILITY" => CommandBody::Capability,
            "NOOP" => CommandBody::Noop,
            "LOGOUT" => CommandBody::Logout,
            "STARTTLS" => CommandBody::StartTls,
            "CHECK" => CommandBody::Check,
            "CLOSE" => CommandBody::Close,
            "UNSELECT" => CommandBody::Unselect,
            "IDLE" => CommandBody::Idle,
            "NAMESPACE" => CommandBody::Namespace,
            "EXPUNGE" => CommandBody::Expunge { uids: None },
            "AUTHENTICATE" => {
                self.sp()?;
                let mechanism = self.atom()?.to_ascii_uppercase();
                let initial_response = if self.eat(b' ') {
                    let text =
                        self.take_while(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
                    Some(text.into_bytes())
                } else {
                    None
                };
                CommandBody::Authenticate {
                    mechanism,
                    initial_response,
                }
            }
            "LOGIN" => {
                self.sp()?;
                let user = self.astring()?;
                self.sp()?;
                let password = self.astring()?;
                CommandBody::Login { user, password }
            }
            "ENABLE" => {
                let mut capabilities = Vec::new();
                while self.eat(b' ') {
                    capabilities.push(self.atom()?.to_ascii_uppercase());
                }
                if capabilities.is_empty() {
                    return Err("ENABLE needs a capability".into());
                }
                CommandBody::Enable(capabilities)
            }
            "ID" => {
                self.sp()?;
                if !self.keyword("NIL") {
                    self.paren_list(true, |c| {
                        let _ = c.nstring()?;
                        Ok(())
                    })?;
                }
                CommandBody::Id
            }
            "SELECT" | "EXAMINE" => self.select(name == "EXAMINE")?,
            "CREATE" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                let mut special_use = Vec::new();
                if self.eat(b' ') {
                    self.expect(b'(', "(")?;
                    if !self.keyword("USE") {
                        return Err("CREATE takes only USE".into());
                    }
                    self.sp()?;
                    special_use = self.flag_list()?;
                    self.expect(b')', ")")?;
                }
                CommandBody::Create {
                    mailbox,
                    special_use,
                }
            }
            "DELETE" => {
                self.sp()?;
                CommandBody::Delete {
                    mailbox: self.mailbox()?,
                }
            }
            "RENAME" => {
                self.sp()?;
                let from = self.mailbox()?;
                self.sp()?;
                let to = self.mailbox()?;
                CommandBody::Rename { from, to }
            }
            "SUBSCRIBE" => {
                self.sp()?;
                CommandBody::Subscribe {
                    mailbox: self.mailbox()?,
                }
            }
            "UNSUBSCRIBE" => {
                self.sp()?;
                CommandBody::Unsubscribe {
                    mailbox: self.mailbox()?,
                }
            }
            "LIST" | "LSUB" => self.list(name == "LSUB")?,
            "STATUS" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                self.sp()?;
                let items = self.paren_list(false, Self::status_item)?;
                CommandBody::Status { mailbox, items }
            }
            "APPEND" => self.append()?,
            "SEARCH" => self.search(false)?,
            "FETCH" => self.fetch(false)?,
            "STORE" => self.store(false)?,
            "COPY" | "MOVE" => self.copy_or_move(false, name == "MOVE")?,
            "UID" => {
                self.sp()?;
                let sub = self.atom()?.to_ascii_uppercase();
                match sub.as_str() {
                    "SEARCH" => self.search(true)?,
                    "FETCH" => self.fetch(true)?,
                    "STORE" => self.store(true)?,
                    "COPY" | "MOVE" => self.copy_or_move(true, sub == "MOVE")?,
                    "EXPUNGE" => {
                        self.sp()?;
                        CommandBody::Expunge {
                            uids: Some(self.sequence_set()?),
                        }
                    }
                    _ => return Err(format!("UID {sub} is not a command")),
                }
            }
            "GETQUOTA" => {
                self.sp()?;
                CommandBody::GetQuota {
                    root: self.astring()?,
                }
            }
            "GETQUOTAROOT" => {
                self.sp()?;
                CommandBody::GetQuotaRoot {
                    mailbox: self.mailbox()?,
                }
            }
            "SETQUOTA" => {
                self.at = self.bytes.len();
                CommandBody::SetQuota
            }
            "COMPRESS" => {
                self.sp()?;
                CommandBody::Compress {
                    mechanism: self.atom()?.to_ascii_uppercase(),
                }
            }
            _ => return Err(format!("{name} is not a command Sealpost knows")),
        };
        self.end()?;
        Ok(body)
    }

    fn nstring(&mut self) -> Parsed<Option<Vec<u8>>> {
        if self.keyword("NIL") {
            return Ok(None);
        }
        self.string().map(Some)
    }

    fn select(&mut self, read_only: bool) -> Parsed<CommandBody> {
        self.sp()?;
        let mailbox = self.mailbox()?;
        let (mut condstore, mut qresync) = (false, None);
        if self.eat(b' ') {
            self.paren_list(false, |c| {
                if c.keyword("CONDSTORE") {
                    condstore = true;
                    return Ok(());
                }
                if !c.keyword("QRESYNC") {
                    return Err("SELECT takes CONDSTORE or QRESYNC".into());
                }
                c.sp()?;
                c.expect(b'(', "(")?;
                let uid_validity = c.nz_number()?;
                c.sp()?;
                let modseq = c.number()?;
                let mut known_uids = None;
                if c.eat(b' ') && c.peek() != Some(b'(') {
                    known_uids = Some(c.known_uid_set()?);
                    c.eat(b' ');
                }
                if c.peek() == Some(b'(') {
                    c.skip_seq_match_data()?;
                }
                c.expect(b')', ")")?;
                qresync = Some(Qresync {
                    uid_validity,
                    modseq,
                    known_uids,
                });
                Ok(())
            })?;
        }
        Ok(CommandBody::Select {
            mailbox,
            read_only,
            condstore,
            qresync,
        })
    }

    fn status_item(&mut self) -> Parsed<StatusItem> {
        let name = self.atom()?.to_ascii_uppercase();
        Ok(match name.as_str() {
            "MESSAGES" => StatusItem::Messages,
            "RECENT" => StatusItem::Recent,
            "UIDNEXT" => StatusItem::UidNext,
            "UIDVALIDITY" => StatusItem::UidValidity,
            "UNSEEN" => StatusItem::Unseen,
            "DELETED" => StatusItem::Deleted,
            "SIZE" => StatusItem::Size,
            "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
            _ => return Err(format!("{name} is not a STATUS item")),
        })
    }

    fn list(&mut self, lsub: bool) -> Parsed<CommandBody> {
        let mut list = List {
            lsub,
            ..List::default()
        };
        self.sp()?;
        if !lsub && self.peek() == Some(b'(') {
            list.extended = true;
            self.paren_list(true, |c| {
                let option = c.atom()?.to_ascii_uppercase();
                match option.as_str() {
                    "SUBSCRIBED" => list.select_subscribed = true,
                    "SPECIAL-USE" => list.select_special_use = true,
                    "RECURSIVEMATCH" => list.recursive_match = true,
                    "REMOTE" => {}
                    _ => return Err(format!("{option} is not a LIST selection option")),
                }
                Ok(())
            })?;
            self.sp()?;
        }
        let reference = String::from_utf8(self.astring_bytes()?)
            .map_err(|_| "a reference that is not UTF-8")?;
        list.reference = self.decode_name(&reference).unwrap_or(reference);
        self.sp()?;
        if !lsub && self.peek() == Some(b'(') {
            list.extended = true;
            list.patterns = self.paren_list(false, Self::list_mailbox)?;
        } else {
            list.patterns = vec![self.list_mailbox()?];
        }
        if !lsub && self.eat(b' ') {
            if !self.keyword("RETURN") {
                return Err("expected RETURN".into());
            }
            list.extended = true;
            self.sp()?;
            self.paren_list(true, |c| {
                let option = c.atom()?.to_ascii_uppercase();
                match option.as_str() {
                    "SUBSCRIBED" => list.return_subscribed = true,
                    "CHILDREN" => list.return_children = true,
                    "SPECIAL-USE" => list.return_special_use = true,
                    "STATUS" => {
                        c.sp()?;
                        list.return_status = Some(c.paren_list(false, Self::status_item)?);
                    }
                    _ => return Err(format!("{option} is not a LIST return option")),
                }
                Ok(())
            })?;
        }
        if list.recursive_match && !list.select_subscribed {
            return Err("RECURSIVEMATCH needs another selection option".into());
        }
        Ok(CommandBody::List(list))
    }

    fn append(&mut self) -> Parsed<CommandBody> {
        self.sp()?;
        let mailbox = self.mailbox()?;
        self.sp()?;
        let mut flags = Vec::new();
        if self.peek() == Some(b'(') {
            flags = self.flag_list()?;
            self.sp()?;
        }
        let mut date = None;
        if self.peek() == Some(b'"') {
            date = Some(self.date_time()?);
            self.sp()?;
        }
        if self.keyword("UTF8") {
            self.sp()?;
            self.expect(b'(', "(")?;
            let message = self.literal()?;
            self.expect(b')', ")")?;
            return Ok(CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            });
        }
        let message = self.literal()?;
        Ok(CommandBody::Append {
            mailbox,
            flags,
            date,
            message,
        })
    }

    fn search(&mut self, uid: bool) -> Parsed<CommandBody> {
        self.sp()?;
        let mut returns = None;
        if self.keyword("RETURN") {
            self.sp()?;
            returns = Some(self.paren_list(true, |c| {
                let option = c.atom()?.to_ascii_uppercase();
                Ok(match option.as_str() {
                    "MIN" => SearchReturn::Min,
                    "MAX" => SearchReturn::Max,
                    "ALL" => SearchReturn::All,
                    "COUNT" => SearchReturn::Count,
                    "SAVE" => SearchReturn::Save,
                    _ => return Err(format!("{option} is not a SEARCH return option")),
                })
            })?);
            self.sp()?;
        }
        let mut charset = None;
        if self.keyword("CHARSET") {
            self.sp()?;
            charset = Some(self.astring()?);
            self.sp()?;
        }
        let mut keys = vec![self.search_key(0)?];
        while self.eat(b' ') {
            if keys.len() >= LIST_ITEMS_MAX {
                return Err("too many search keys".into());
            }
            keys.push(self.search_key(0)?);
        }
        let criteria = if keys.len() == 1 {
            keys.remove(0)
        } else {
            SearchKey::And(keys)
        };
        Ok(CommandBody::Search {
            uid,
            returns,
            charset,
            criteria,
        })
    }

    fn search_text(&mut self) -> Parsed<String> {
        self.sp()?;
        let bytes = self.astring_bytes()?;
        String::from_utf8(bytes)
            .map_err(|_| "[BADCHARSET (UTF-8 US-ASCII)] search text must be UTF-8".to_string())
    }

    /// One search key. Nesting is counted in `depth` and refused past NESTING_DEPTH_MAX.
    fn search_key(&mut self, depth: usize) -> Parsed<SearchKey> {
        if depth > NESTING_DEPTH_MAX {
            return Err("search keys nested too deeply".into());
        }
        if self.peek() == Some(b'(') {
            let mut keys = self.paren_list(false, |c| c.search_key(depth + 1))?;
            return Ok(if keys.len() == 1 {
                keys.remove(0)
            } else {
                SearchKey::And(keys)
            });
        }
        if self
            .peek()
            .is_some_and(|b| b.is_ascii_digit() || b == b'*' || b == b'$')
        {
            return Ok(SearchKey::Sequence(self.sequence_set()?));
        }
        let name = self.atom()?.to_ascii_uppercase();
        let flag = |flag: &str, set: bool| {
            Ok(SearchKey::Flag {
                flag: flag.to_string(),
                set,
            })
        };
        let header = |c: &mut Self, field: &str| {
            Ok(SearchKey::Header {
                field: field.to_string(),
                value: c.search_text()?,
            })
        };
        match name.as_str() {
            "ALL" => Ok(SearchKey::All),
            "ANSWERED" => flag("\\Answered", true),
            "DELETED" => flag("\\Deleted", true),
            "DRAFT" => flag("\\Draft", true),
            "FLAGGED" => flag("\\Flagged", true),
            "SEEN" => flag("\\Seen", true),
            "UNANSWERED" => flag("\\Answered", false),
            "UNDELETED" => flag("\\Deleted", false),
            "UNDRAFT" => flag("\\Draft", false),
            "UNFLAGGED" => flag("\\Flagged", false),
            "UNSEEN" => flag("\\Seen", false),
            "KEYWORD" | "UNKEYWORD" => {
                self.sp()?;
                Ok(SearchKey::Flag {
                    flag: self.atom()?,
                    set: name == "KEYWORD",
                })
            }
            "NEW" => Ok(SearchKey::New),
            "OLD" => Ok(SearchKey::Old),
            "RECENT" => Ok(SearchKey::Recent),
            "BCC" => header(self, "bcc"),
            "CC" => header(self, "cc"),
            "FROM" => header(self, "from"),
            "TO" => header(self, "to"),
            "SUBJECT" => header(self, "subject"),
            "HEADER" => {
                self.sp()?;
                let field = self.astring()?.to_ascii_lowercase();
                Ok(SearchKey::Header {
                    field,
                    value: self.search_text()?,
                })
            }
            "BODY" => Ok(SearchKey::Body(self.search_text()?)),
            "TEXT" => Ok(SearchKey::Text(self.search_text()?)),
            "BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE" => {
                self.sp()?;
                let day = self.date()?;
                Ok(match name.as_str() {
                    "BEFORE" => SearchKey::Before(day),
                    "ON" => SearchKey::On(day),
                    "SINCE" => SearchKey::Since(day),
                    "SENTBEFORE" => SearchKey::SentBefore(day),
                    "SENTON" => SearchKey::SentOn(day),
                    _ => SearchKey::SentSince(day),
                })
            }
            "LARGER" => {
                self.sp()?;
                Ok(SearchKey::Larger(self.number()?))
            }
            "SMALLER" => {
                self.sp()?;
                Ok(SearchKey::Smaller(self.number()?))
            }
            "UID" => {
                self.sp()?;
                Ok(SearchKey::Uid(self.sequence_set()?))
            }
            "NOT" => {
                self.sp()?;
                Ok(SearchKey::Not(Box::new(self.search_key(depth + 1)?)))
            }
            "OR" => {
                self.sp()?;
                let left = self.search_key(depth + 1)?;
                self.sp()?;
                let right = self.search_key(depth + 1)?;
                Ok(SearchKey::Or(Box::new(left), Box::new(right)))
            }
            "MODSEQ" => {
                self.sp()?;
                if self.peek() == Some(b'"') {
                    // An entry name and type: per-flag MODSEQs are not kept; the message's applies.
                    self.quoted()?;
                    self.sp()?;
                    self.atom()?;
                    self.sp()?;
                }
                Ok(SearchKey::ModSeq(self.number()?))
            }
            _ => Err(format!("{name} is not a search key")),
        }
    }

    fn fetch(&mut self, uid: bool) -> Parsed<CommandBody> {
        self.sp()?;
        let set = self.sequence_set()?;
        self.sp()?;
        let items = if self.keyword("ALL") {
            vec![
                FetchItem::Flags,
                FetchItem::InternalDate,
                FetchItem::Rfc822Size,
                FetchItem::Envelope,
            ]
        } else if self.keyword("FAST") {
            vec![
                FetchItem::Flags,
                FetchItem::InternalDate,
                FetchItem::Rfc822Size,
            ]
        } else if self.keyword("FULL") {
            vec![
                FetchItem::Flags,
                FetchItem::InternalDate,
                FetchItem::Rfc822Size,
                FetchItem::Envelope,
                FetchItem::Body,
            ]
        } else if self.peek() == Some(b'(') {
            self.paren_list(false, Self::fetch_item)?
        } else {
            vec![self.fetch_item()?]
        };
        let (mut changed_since, mut vanished) = (None, false);
        if self.eat(b' ') {
            self.paren_list(false, |c| {
                if c.keyword("CHANGEDSINCE") {
                    c.sp()?;
                    changed_since = Some(c.number()?);
                } else if c.keyword("VANISHED") {
                    vanished = true;
                } else {
                    return Err("FETCH takes CHANGEDSINCE or VANISHED".into());
                }
                Ok(())
            })?;
        }
        if vanished && (!uid || changed_since.is_none()) {
            return Err("VANISHED needs UID FETCH with CHANGEDSINCE".into());
        }
        Ok(CommandBody::Fetch {
            uid,
            set,
            items,
            changed_since,
            vanished,
        })
    }

    fn fetch_item(&mut self) -> Parsed<FetchItem> {
        for (word, item) in [
            ("ENVELOPE", FetchItem::Envelope),
            ("FLAGS", FetchItem::Flags),
            ("INTERNALDATE", FetchItem::InternalDate),
            ("RFC822.SIZE", FetchItem::Rfc822Size),
            ("RFC822.HEADER", FetchItem::Rfc822Header),
            ("RFC822.TEXT", FetchItem::Rfc822Text),
            ("RFC822", FetchItem::Rfc822),
            ("BODYSTRUCTURE", FetchItem::BodyStructure),
            ("UID", FetchItem::Uid),
            ("MODSEQ", FetchItem::ModSeq),
        ] {
            if self.keyword(word) {
                return Ok(item);
            }
        }
        if self.rest().len() > 11 && self.rest()[..12].eq_ignore_ascii_case(b"BINARY.SIZE[") {
            self.at += 11;
            let path = self.binary_section()?;
            return Ok(FetchItem::BinarySize { path });
        }
        for (word, peek) in [("BINARY.PEEK", true), ("BINARY", false)] {
            if self.rest().len() > word.len()
                && self.rest()[..word.len()].eq_ignore_ascii_case(word.as_bytes())
                && self.rest()[word.len()] == b'['
            {
                self.at += word.len();
                let path = self.binary_section()?;
                let partial = self.partial()?;
                return Ok(FetchItem::Binary {
                    peek,
                    path,
                    partial,
                });
            }
        }
        for (word, peek) in [("BODY.PEEK", true), ("BODY", false)] {
            let rest = self.rest();
            if rest.len() >= word.len() && rest[..word.len()].eq_ignore_ascii_case(word.as_bytes())
            {
                match rest.get(word.len()) {
                    Some(b'[') => {
                        self.at += word.len();
                        let section = self.section()?;
                        let partial = self.partial()?;
                        return Ok(FetchItem::Section {
                            peek,
                            section,
                            partial,
                        });
                    }
                    _ if !peek && self.keyword("BODY") => return Ok(FetchItem::Body),
                    _ => {}
                }
            }
        }
        Err(format!(
            "{} is not a FETCH item",
            String::from_utf8_lossy(&self.rest()[..self.rest().len().min(20)]).trim_end()
        ))
    }

    fn section_path(&mut self) -> Parsed<Vec<u32>> {
        let mut path = Vec::new();
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            if path.len() >= NESTING_DEPTH_MAX {
                return Err("a section path nested too deeply".into());
            }
            path.push(self.nz_number()?);
            if !self.eat(b'.') {
                break;
            }
        }
        Ok(path)
    }

    fn binary_section(&mut self) -> Parsed<Vec<u32>> {
        self.expect(b'[', "[")?;
        let path = self.section_path()?;
        self.expect(b']', "]")?;
        Ok(path)
    }

    fn section(&mut self) -> Parsed<Section> {
        self.expect(b'[', "[")?;
        let path = self.section_path()?;
        let text = if self.peek() == Some(b']') {
            None
        } else if self.keyword("HEADER.FIELDS.NOT") || self.keyword("HEADER.FIELDS") {
            let not = self.bytes[..self.at].ends_with(b".NOT")
                || self.bytes[..self.at].ends_with(b".not");
            self.sp()?;
            let fields = self.paren_list(false, |c| c.astring())?;
            Some(SectionText::HeaderFields { fields, not })
        } else if self.keyword("HEADER") {
            Some(SectionText::Header)
        } else if self.keyword("TEXT") {
            Some(SectionText::Text)
        } else if !path.is_empty() && self.keyword("MIME") {
            Some(SectionText::Mime)
        } else {
            return Err("not a section".into());
        };
        self.expect(b']', "]")?;
        Ok(Section { path, text })
    }

    fn partial(&mut self) -> Parsed<Option<(u64, u64)>> {
        if !self.eat(b'<') {
            return Ok(None);
        }
        let offset = self.number()?;
        self.expect(b'.', ". in a partial range")?;
        let length = self.number()?;
        if length == 0 {
            return Err("a partial range of length 0".into());
        }
        self.expect(b'>', ">")?;
        Ok(Some((offset, length)))
    }

    fn store(&mut self, uid: bool) -> Parsed<CommandBody> {
        self.sp()?;
        let set = self.sequence_set()?;
        self.sp()?;
        let mut unchanged_since = None;
        if self.peek() == Some(b'(') {
            self.paren_list(false, |c| {
                if !c.keyword("UNCHANGEDSINCE") {
                    return Err("STORE takes UNCHANGEDSINCE".into());
                }
                c.sp()?;
                unchanged_since = Some(c.number()?);
                Ok(())
            })?;
            self.sp()?;
        }
        let mode = if self.eat(b'+') {
            StoreMode::Add
        } else if self.eat(b'-') {
            StoreMode::Remove
        } else {
            StoreMode::Replace
        };
        let silent = if self.keyword("FLAGS.SILENT") {
            true
        } else if self.keyword("FLAGS") {
            false
        } else {
            return Err("expected FLAGS or FLAGS.SILENT".into());
        };
        self.sp()?;
        let flags = if self.peek() == Some(b'(') {
            self.flag_list()?
        } else {
            let mut flags = vec![self.flag()?];
            while self.eat(b' ') {
                flags.push(self.flag()?);
            }
            flags
        };
        Ok(CommandBody::Store {
            uid,
            set,
            mode,
            silent,
            flags,
            unchanged_since,
        })
    }

    fn copy_or_move(&mut self, uid: bool, is_move: bool) -> Parsed<CommandBody> {
        self.sp()?;
        let set = self.sequence_set()?;
        self.sp()?;
        let mailbox = self.mailbox()?;
        Ok(if is_move {
            CommandBody::Move { uid, set, mailbox }
        } else {
            CommandBody::Copy { uid, set, mailbox }
        })
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn month_number(name: &str) -> Option<i64> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(name))
        .map(|i| i as i64 + 1)
}

/// `d-Mon-yyyy` to the Unix time of that day's midnight, UTC.
pub(crate) fn parse_day(text: &str) -> Option<i64> {
    let mut parts = text.split('-');
    let day: i64 = parts.next()?.parse().ok()?;
    let month = month_number(parts.next()?)?;
    let year: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=31).contains(&day) || !(1..=9999).contains(&year) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400)
}

/// `dd-Mon-yyyy hh:mm:ss +zzzz` (the day may have a leading space).
pub(crate) fn parse_date_time(text: &str) -> Option<ImapDate> {
    let text = text.trim_start();
    let (date, rest) = text.split_once(' ')?;
    let (clock, zone) = rest.split_once(' ')?;
    let midnight = parse_day(date)?;
    let mut hms = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || m > 59 || s > 60 || zone.len() != 5 {
        return None;
    }
    let sign = match zone.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let zh: i64 = zone.get(1..3)?.parse().ok()?;
    let zm: i64 = zone.get(3..5)?.parse().ok()?;
    let offset = sign * (zh * 60 + zm);
    Some(ImapDate {
        unix_seconds: midnight + h * 3600 + m * 60 + s - offset * 60,
        offset_minutes: i16::try_from(offset).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<CommandBody, String> {
        parse_command(line.as_bytes(), NameEncoding::Utf7)
            .map(|c| c.body)
            .map_err(|e| e.message)
    }

    #[test]
    fn a_sequence_set_past_its_ranges_max_is_refused_and_one_at_it_is_merged() {
        let at_max = format!(
            "a FETCH {} FLAGS\r\n",
            vec!["1:*"; SEQUENCE_SET_RANGES_MAX].join(",")
        );
        let Ok(CommandBody::Fetch { set, .. }) = parse(&at_max) else {
            panic!("a set at the bound must parse");
        };
        let one = SequenceSet::Ranges(Ranges::new([(SeqNumber::Value(1), SeqNumber::Largest)]));
        assert_eq!(set, one);
        let over = format!(
            "a FETCH {} FLAGS\r\n",
            vec!["1"; SEQUENCE_SET_RANGES_MAX + 1].join(",")
        );
        assert_eq!(
            parse(&over).unwrap_err(),
            "[LIMIT] a sequence set of more than 10000 ranges"
        );
    }

    #[test]
    fn dates_parse_to_unix_time() {
        assert_eq!(parse_day("1-Jan-1970"), Some(0));
        assert_eq!(parse_day("14-Nov-2023"), Some(1_699_920_000));
        assert_eq!(parse_day("31-Foo-2023"), None);
        let dt = parse_date_time("14-Nov-2023 22:13:20 +0100").unwrap();
        assert_eq!(
            (dt.unix_seconds, dt.offset_minutes),
            (1_700_000_000 - 3600, 60)
        );
        assert_eq!(
            parse_date_time(" 2-Jan-2024 00:00:00 -0000")
                .unwrap()
                .unix_seconds,
            1_704_153_600
        );
    }

    #[test]
    fn commands_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse("a LOGIN bob \"pa ss\"\r\n"),
            Ok(CommandBody::Login {
                user: "bob".into(),
                password: "pa ss".into()
            })
        );
        assert_eq!(
            parse("a login {3}\r\nbob {2}\r\npw\r\n"),
            Ok(CommandBody::Login {
                user: "bob".into(),
                password: "pw".into()
            })
        );
        assert!(
            matches!(parse("a SELECT inbox (CONDSTORE)\r\n"), Ok(CommandBody::Select { mailbox, condstore: true, .. }) if mailbox == "INBOX")
        );
        assert!(matches!(
            parse("a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))\r\n"),
            Ok(CommandBody::Select {
                qresync: Some(Qresync {
                    uid_validity: 67890007,
                    ..
                }),
                ..
            })
        ));
        // RFC 7162 section 7: known-uids and the match data are sets without `*`, and `$` is
        // no set there; match data of any length is only checked and skipped.
        for wrong in ["1:*", "$", "*", "3,*:5"] {
            assert!(
                parse(&format!(
                    "a SELECT INBOX (QRESYNC (67890007 5 {wrong}))\r\n"
                ))
                .is_err(),
                "{wrong}"
            );
        }
        assert!(parse("a SELECT INBOX (QRESYNC (67890007 5 1:9 (1,2:* 1,5)))\r\n").is_err());
        assert!(parse("a SELECT INBOX (QRESYNC (67890007 5 1:9 (0 1)))\r\n").is_err());
        let spread: Vec<String> = (1..=20_000u32).map(|n| (n * 2).to_string()).collect();
        let long = format!(
            "a SELECT INBOX (QRESYNC (67890007 5 1:9 ({} {})))\r\n",
            spread.join(","),
            spread.join(",")
        );
        assert!(
            matches!(
                parse(&long),
                Ok(CommandBody::Select {
                    qresync: Some(Qresync {
                        known_uids: Some(_),
                        ..
                    }),
                    ..
                })
            ),
            "match data past SEQUENCE_SET_RANGES_MAX ranges is skipped, not refused"
        );
        assert!(matches!(
            parse(
                "a UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From Subject)]<0.100>) (CHANGEDSINCE 5 VANISHED)\r\n"
            ),
            Ok(CommandBody::Fetch {
                uid: true,
                vanished: true,
                changed_since: Some(5),
                ..
            })
        ));
        assert!(
            matches!(parse("a FETCH 1 BODY[1.2.MIME]\r\n"), Ok(CommandBody::Fetch { items, .. }) if items == vec![FetchItem::Section { peek: false, section: Section { path: vec![1, 2], text: Some(SectionText::Mime) }, partial: None }])
        );
        assert!(
            matches!(parse("a FETCH 1:3 (BODY ENVELOPE)\r\n"), Ok(CommandBody::Fetch { items, .. }) if items == vec![FetchItem::Body, FetchItem::Envelope])
        );
        assert!(matches!(
            parse("a STORE 2:4 (UNCHANGEDSINCE 12) +FLAGS.SILENT (\\Deleted $Junk)\r\n"),
            Ok(CommandBody::Store {
                silent: true,
                mode: StoreMode::Add,
                unchanged_since: Some(12),
                ..
            })
        ));
        assert!(
            matches!(parse("a LIST (SUBSCRIBED) \"\" (\"*\" INBOX%) RETURN (CHILDREN STATUS (MESSAGES SIZE))\r\n"), Ok(CommandBody::List(l)) if l.select_subscribed && l.patterns.len() == 2 && l.return_status.as_ref().map(Vec::len) == Some(2))
        );
        assert!(matches!(
            parse("a SEARCH RETURN (MIN COUNT) CHARSET UTF-8 OR FROM alice NOT (SEEN LARGER 100) 1:5 $\r\n"),
            Ok(CommandBody::Search { returns: Some(_), .. })
        ));
        assert!(
            matches!(parse("a APPEND Sent (\\Seen) \"14-Nov-2023 22:13:20 +0000\" {2}\r\nhi\r\n"), Ok(CommandBody::Append { message, .. }) if message == b"hi")
        );
        assert!(
            matches!(parse("a CREATE \"My &AOQ-\" (USE (\\Archive))\r\n"), Ok(CommandBody::Create { mailbox, .. }) if mailbox == "My ä")
        );

        for (bad, why) in [
            ("a FOO\r\n", "not a command"),
            ("a FETCH 0 FLAGS\r\n", "0 is not"),
            ("a FETCH 1 (FLAGS\r\n", "expected"),
            ("a LOGIN bob\r\n", "expected a space"),
            ("a APPEND x {5}\r\nab\r\n", "shorter"),
            ("a FETCH 1 BODY[1.2.FOO]\r\n", "not a section"),
            ("a NOOP extra\r\n", "unexpected"),
        ] {
            let got = parse(bad).unwrap_err();
            assert!(got.contains(why), "{bad:?}: {got}");
        }
        let deep = format!("a SEARCH {}ALL{}\r\n", "(".repeat(40), ")".repeat(40));
        assert!(parse(&deep).unwrap_err().contains("nested too deeply"));
        let nots = format!("a SEARCH {}ALL\r\n", "NOT ".repeat(40));
        assert!(parse(&nots).unwrap_err().contains("nested too deeply"));
        assert_eq!(
            parse_command(b"\r\n", NameEncoding::Utf7).unwrap_err().tag,
            None
        );
    }
}
