//! Text that came from outside (senders, CSV rows, remote servers) made safe to print: control
//! characters and bidi overrides are shown as visible escapes, never passed to a terminal or a log.

use std::borrow::Cow;

/// Characters that can steer a terminal or reorder what a reader sees: C0 and C1 controls, DEL,
/// the bidi embeddings, overrides and isolates, and the Unicode line/paragraph separators.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || is_bidi_or_separator(c)
}

/// Bidi embeddings/overrides (U+202A–U+202E), isolates (U+2066–U+2069) and U+2028/U+2029.
pub fn is_bidi_or_separator(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// `s` with every [`is_unsafe_char`] written as `\u{…}` (so ESC becomes the six characters
/// `\u{1b}`); borrowed when there is nothing to escape.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_escaped() {
        assert_eq!(escape_controls("plain 한국어 text"), "plain 한국어 text");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\u{1b}]0;pwned\u{7}b"),
            "a\\u{1b}]0;pwned\\u{7}b"
        );
        assert_eq!(
            escape_controls("x\r\ny\t\u{7f}\u{9b}"),
            "x\\u{d}\\u{a}y\\u{9}\\u{7f}\\u{9b}"
        );
        assert_eq!(escape_controls("\u{202e}gpj.exe"), "\\u{202e}gpj.exe");
        assert_eq!(
            escape_controls("a\u{2028}b\u{2069}"),
            "a\\u{2028}b\\u{2069}"
        );
    }
}
