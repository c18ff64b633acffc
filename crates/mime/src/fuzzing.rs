//! Entry points for the fuzzer (`fuzz/`, run by `scripts/fuzz`) and for the test that replays
//! its corpora on stable (`tests/fuzz_corpora.rs`). Not an API: each function takes a
//! stranger's bytes and must never panic.

use crate::{header, Limits, SectionText, Structure, Summary};

/// The structure walker and the header reader on a message as a sender wrote it. `data[0]`
/// picks the limits (the defaults, or a shallow, small tree, so that both the limits and
/// deep trees are reached); the rest is the message. Every part's ranges must lie in the
/// message, and every section IMAP can name must be cut without a panic.
pub fn message(data: &[u8]) {
    let Some((selector, raw)) = data.split_first() else {
        return;
    };
    let limits = if selector & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            nesting_depth_max: 3,
            parts_max: 8,
        }
    };
    let structure = Structure::parse(raw, limits);
    assert!(
        !structure.parts.is_empty(),
        "a message has at least its root part"
    );
    for part in &structure.parts {
        for range in [&part.header, &part.body] {
            assert!(
                range.start <= range.end && range.end <= raw.len(),
                "a part's range {range:?} lies outside the message of {} bytes",
                raw.len()
            );
        }
        let _ = header_fields_of(raw, part.header.clone());
        let _ = part.param("charset");
    }
    let _ = structure.body_structure(true);
    let _ = structure.body_structure(false);
    let _ = crate::envelope(&structure.envelope);
    let _ = crate::Shown::of(&structure.envelope);
    let parts = u32::try_from(structure.parts.len().min(8)).unwrap_or(8);
    let mut paths: Vec<Vec<u32>> = vec![Vec::new()];
    for n in 1..=parts {
        paths.extend([vec![n], vec![n, 1], vec![1, n], vec![n, n, 1]]);
    }
    for path in &paths {
        for text in [
            SectionText::Whole,
            SectionText::Header,
            SectionText::Text,
            SectionText::Mime,
        ] {
            if let Some(range) = structure.section_range(raw.len(), path, text) {
                assert!(range.start <= range.end && range.end <= raw.len());
            }
        }
    }
    let summary = Summary::of_parsed(raw, &structure);
    let _ = Summary::from_bytes(&summary.to_bytes());
    let _ = Summary::from_bytes(raw);
    let _ = crate::search_text(raw);
    let _ = crate::decode_base64(raw);
    let _ = crate::decode_quoted_printable(raw);
}

/// The header reader alone: the fields of the first header block, unfolded, each value also
/// read as an address list and as the `type/subtype; a=b` syntax.
fn header_fields_of(raw: &[u8], range: std::ops::Range<usize>) -> usize {
    let fields = header::fields(raw, range.clone());
    for field in &fields {
        assert!(field.name.end <= field.value.start && field.value.end <= range.end);
        let value = header::unfolded(raw, field);
        let _ = header::structured(&value);
        let _ = crate::parse_address_list(&value);
    }
    let _ = header::first(raw, &fields, "content-type");
    let _ = crate::header_fields(raw, range.clone(), &["From", "Subject"], false);
    let _ = crate::header_fields(raw, range, &["From", "Subject"], true);
    fields.len()
}
