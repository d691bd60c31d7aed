//! Quoting untrusted text: in error messages and in human output.
//!
//! Errors quote the input they refuse, and a 50 MB CSV field once came back whole in one. Human
//! output prints names and labels that agents and API callers chose, and an escape sequence or a
//! newline in a label rewrote the operator's terminal. [`clip`] bounds what an error quotes;
//! [`escape`] makes control characters visible. Every crate that quotes input uses these two.

use std::borrow::Cow;
use std::fmt;

/// How many bytes of input an error message quotes at most.
pub const QUOTE_MAX_BYTES: usize = 200;

/// `s` cut to at most `max` bytes (at a character boundary), with the number of bytes left out
/// appended, so that a message never carries a whole file.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} more bytes)", &s[..end], s.len() - end))
}

/// `s` cut to [`QUOTE_MAX_BYTES`] and with its control characters escaped: the form in which an
/// error message quotes input.
pub fn quote(s: &str) -> String {
    escape(&clip(s, QUOTE_MAX_BYTES)).into_owned()
}

/// A whole message that embeds input (a parser's error, which quotes the bad value and ends
/// with its location) cut to at most about `max` bytes by dropping its middle, so that both the
/// start and the `at line 1 column 97` at its end survive; control characters escaped.
pub fn quote_message(s: &str, max: usize) -> String {
    if s.len() <= max {
        return escape(s).into_owned();
    }
    let (head_len, tail_len) = (max * 2 / 3, max / 3);
    let mut head = head_len;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - tail_len;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    let cut = format!("{}… ({} bytes) …{}", &s[..head], tail - head, &s[tail..]);
    escape(&cut).into_owned()
}

/// Whether a character is shown escaped: C0 and C1 controls, DEL, and the bidirectional
/// overrides and isolates that reorder what a terminal shows.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with control characters shown as Rust escapes (`\n`, `\t`, `\u{1b}`), so that text
/// someone else chose cannot move the cursor, clear the screen or fake a line of output.
/// Backslashes are doubled only when something else was escaped, so plain text (Windows paths
/// included) prints as it is.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A `Display` of `s` through [`escape`], for format strings: `println!("{}", Escaped(&label))`.
/// Width and alignment flags apply to the escaped text.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&escape(self.0))
    }
}

/// `n` and a noun that agrees with it, for human output: `count(1, "host")` is `1 host`,
/// `count(3, "host")` is `3 hosts` (the plural adds `s`; see [`count_as`] for others).
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `n` with `one` when it is 1 and `many` otherwise: `count_as(2, "was", "were")`.
pub fn count_as(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(count(0, "host"), "0 hosts");
        assert_eq!(count(1, "host"), "1 host");
        assert_eq!(count(20, "peer"), "20 peers");
        assert_eq!(count_as(1, "process", "processes"), "1 process");
        assert_eq!(count_as(2, "process", "processes"), "2 processes");
    }

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdef", 3), "abc… (3 more bytes)");
        // 'é' is two bytes: a cut inside it moves back.
        assert_eq!(clip("aé", 2), "a… (2 more bytes)");
        let big = "x".repeat(50 << 20);
        assert!(quote(&big).len() < 300);
        let msg = format!("invalid type: string \"{big}\", expected f64 at line 1 column 9");
        let q = quote_message(&msg, 300);
        assert!(q.len() < 400, "{}", q.len());
        assert!(q.starts_with("invalid type: string \"xxx"), "{q}");
        assert!(q.ends_with("xxx\", expected f64 at line 1 column 9"), "{q}");
        assert_eq!(quote_message("short\n", 300), "short\\n");
    }

    #[test]
    fn escape_shows_control_characters() {
        assert_eq!(escape("web-01"), "web-01");
        assert_eq!(escape(r"C:\dir"), r"C:\dir");
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("\x1b[2J\\"), "\\u{1b}[2J\\\\");
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(escape("\u{9b}"), "\\u{9b}");
        assert_eq!(format!("[{:<6}]", Escaped("a\tb")), "[a\\tb  ]");
    }

    proptest! {
        #[test]
        fn escaped_text_has_no_control_characters(s in "\\PC*|[\\x00-\\x1f\\x7f-\\u{9f}a\\\\]*") {
            let e = escape(&s);
            prop_assert!(!e.chars().any(needs_escape), "{e:?}");
            let q = quote(&s);
            prop_assert!(q.len() <= QUOTE_MAX_BYTES * 10 + 32);
        }
    }
}
