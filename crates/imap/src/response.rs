//! Writing IMAP syntax: strings, flags, dates, mailbox names.

use sealpost_storage::{Flags, InternalDate, SystemFlag};

use crate::parse::NameEncoding;
use crate::utf7;

/// Appends `text` as a quoted string when it can be one, else as a literal.
pub(crate) fn string(out: &mut Vec<u8>, text: &[u8]) {
    let quotable = text.len() < 1024 && text.iter().all(|&b| (0x20..0x7F).contains(&b));
    if quotable {
        out.push(b'"');
        for &b in text {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, text);
    }
}

pub(crate) fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
}

/// A mailbox name as the client reads names: modified UTF-7, or UTF-8 after IMAP4rev2 /
/// UTF8=ACCEPT. UTF-8 names go out as quoted strings (RFC 9051 allows 8-bit there).
pub(crate) fn mailbox(out: &mut Vec<u8>, name: &str, encoding: NameEncoding) {
    match encoding {
        NameEncoding::Utf7 => string(out, utf7::encode(name).as_bytes()),
        NameEncoding::Utf8 => {
            if name
                .chars()
                .any(|c| c.is_control() || c == '"' || c == '\\')
                || name.is_ascii()
            {
                string(out, name.as_bytes());
            } else {
                out.push(b'"');
                out.extend_from_slice(name.as_bytes());
                out.push(b'"');
            }
        }
    }
}

pub(crate) fn flag_name(flag: SystemFlag) -> &'static str {
    match flag {
        SystemFlag::Seen => "\\Seen",
        SystemFlag::Answered => "\\Answered",
        SystemFlag::Flagged => "\\Flagged",
        SystemFlag::Deleted => "\\Deleted",
        SystemFlag::Draft => "\\Draft",
    }
}

/// `(\Seen $Label1)`.
/// A message's flags in FETCH syntax; `recent` adds `\Recent` (IMAP4rev1 sessions only).
pub(crate) fn flags(flags: &Flags, recent: bool) -> String {
    let mut names: Vec<&str> = flags.system_flags().map(flag_name).collect();
    names.extend(flags.keywords().iter().map(String::as_str));
    if recent {
        names.push("\\Recent");
    }
    format!("({})", names.join(" "))
}

/// Parses flag names as a client writes them into the store's flags. `\Recent` is ignored
/// (the server sets it, never a client); unknown system flags are an error.
pub(crate) fn parse_flags(names: &[String]) -> Result<Flags, String> {
    let mut out = Flags::new();
    for name in names {
        let system = match name.to_ascii_lowercase().as_str() {
            "\\seen" => Some(SystemFlag::Seen),
            "\\answered" => Some(SystemFlag::Answered),
            "\\flagged" => Some(SystemFlag::Flagged),
            "\\deleted" => Some(SystemFlag::Deleted),
            "\\draft" => Some(SystemFlag::Draft),
            "\\recent" => continue,
            other if other.starts_with('\\') => {
                return Err(format!("{name} is not a flag a client may set"))
            }
            _ => None,
        };
        match system {
            Some(flag) => out = out.with(flag),
            None => out.add_keyword(name),
        }
    }
    Ok(out)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `"02-Nov-2026 10:00:00 +0100"`.
pub(crate) fn internal_date(date: InternalDate) -> String {
    let offset = i64::from(date.offset_minutes);
    let local = date.unix_seconds + offset * 60;
    let days = local.div_euclid(86_400);
    let seconds = local.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let sign = if offset < 0 { '-' } else { '+' };
    format!(
        "\"{:02}-{}-{:04} {:02}:{:02}:{:02} {}{:02}{:02}\"",
        day,
        MONTHS[(month - 1) as usize % 12],
        year,
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60,
        sign,
        offset.abs() / 60,
        offset.abs() % 60
    )
}

/// The civil date of a day number (days since 1970-01-01).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_flags_and_strings_are_written_as_imap_wants() {
        let date = InternalDate {
            unix_seconds: 1_700_000_000,
            offset_minutes: 60,
        };
        assert_eq!(internal_date(date), "\"14-Nov-2023 23:13:20 +0100\"");
        let west = InternalDate {
            unix_seconds: 0,
            offset_minutes: -330,
        };
        assert_eq!(internal_date(west), "\"31-Dec-1969 18:30:00 -0530\"");
        let parsed = parse_flags(&["\\SEEN".into(), "$Label1".into(), "\\Recent".into()]).unwrap();
        assert_eq!(flags(&parsed, false), "(\\Seen $Label1)");
        assert_eq!(flags(&parsed, true), "(\\Seen $Label1 \\Recent)");
        assert!(parse_flags(&["\\Bogus".into()]).is_err());
        let mut out = Vec::new();
        string(&mut out, b"a \"b\"");
        string(&mut out, "é".as_bytes());
        assert_eq!(out, b"\"a \\\"b\\\"\"{2}\r\n\xc3\xa9");
    }
}
