//! What the IMAP and SMTP transcript tests share: expanding a transcript line into what is
//! sent, and matching a reply against an expected line.

/// Expands `{{x*N}}` to N copies of `x` (long lines) and `{{CRLF}}` to a line break.
///
/// ```
/// assert_eq!(sealpost_testkit::expand("a{{x*3}}b{{CRLF}}"), "axxxb\r\n");
/// ```
pub fn expand(text: &str) -> String {
    let mut out = text.to_string();
    while let Some(start) = out.find("{{x*") {
        let Some(len) = out[start..].find("}}") else {
            break;
        };
        let Ok(count) = out[start + 4..start + len].parse::<usize>() else {
            break;
        };
        out.replace_range(start..start + len + 2, &"x".repeat(count));
    }
    out.replace("{{CRLF}}", "\r\n")
}

/// Whether `line` matches `expected`, where `{{any}}` matches any run of text.
///
/// ```
/// assert!(sealpost_testkit::line_matches("a1 OK {{any}} done", "a1 OK [X] done"));
/// assert!(!sealpost_testkit::line_matches("a1 OK", "a1 OK more"));
/// ```
pub fn line_matches(expected: &str, line: &str) -> bool {
    let parts: Vec<&str> = expected.split("{{any}}").collect();
    if parts.len() == 1 {
        return expected == line;
    }
    let Some(mut rest) = line.strip_prefix(parts[0]) else {
        return false;
    };
    for (i, part) in parts.iter().enumerate().skip(1) {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}
