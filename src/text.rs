//! Text from outside (mail headers and bodies, form fields, server replies) made safe to print:
//! control characters and the invisible characters that reorder a terminal line are written as
//! visible `\u{..}` escapes, so nobody's terminal or log viewer runs a sender's escape sequence.

use std::fmt::Write as _;

/// True for what [`escape_controls`] escapes: C0 (tab and line breaks included), DEL, C1, the
/// bidi embeddings and overrides U+202A–U+202E, the bidi isolates U+2066–U+2069, and the line
/// and paragraph separators U+2028 / U+2029.
pub fn is_escaped(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{2028}'
        | '\u{2029}')
}

/// `s` with every character [`is_escaped`] names written as `\u{1b}` (lowercase hex, Rust's
/// notation); everything else unchanged.
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(is_escaped) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_escaped(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_bidi_and_separators_only() {
        let cases = [
            ("plain text, 한국어, café", "plain text, 한국어, café"),
            ("\u{1b}[31mred\u{1b}[0m", "\\u{1b}[31mred\\u{1b}[0m"),
            (
                "\u{1b}]8;;http://x\u{7}link",
                "\\u{1b}]8;;http://x\\u{7}link",
            ),
            ("a\tb\r\nc\0", "a\\u{9}b\\u{d}\\u{a}c\\u{0}"),
            ("del\u{7f} c1\u{85}\u{9b}", "del\\u{7f} c1\\u{85}\\u{9b}"),
            ("\u{202e}txt.exe\u{202c}", "\\u{202e}txt.exe\\u{202c}"),
            (
                "\u{2066}\u{2069}\u{2028}\u{2029}",
                "\\u{2066}\\u{2069}\\u{2028}\\u{2029}",
            ),
            ("\u{200b}\u{feff}\u{a0}", "\u{200b}\u{feff}\u{a0}"),
        ];
        for (input, want) in cases {
            assert_eq!(escape_controls(input), want, "{input:?}");
            assert!(!escape_controls(input).chars().any(is_escaped), "{input:?}");
        }
    }
}
