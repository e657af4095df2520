//! The one place where text from outside is made safe to show and to keep.
//!
//! Text that session-sync did not write itself - a vendor's error body, a JSON parser's
//! message, a driver's or the OS's error - may be long, span lines, and echo what it was sent:
//! the token, or the signed download link. Before such text reaches a log line, an error
//! message or the database, it goes through [`Redactor::clean`] (or [`chain`], for a whole
//! error), which
//!
//! - replaces the account's secret values (the token, in plain, percent-encoded and
//!   JSON-escaped forms) with `[REDACTED]`, and the query string of every http(s) URL in the
//!   text (a signed download link's signature) with `?[redacted]`;
//! - turns it into one line (control characters become spaces, runs of spaces one space);
//! - cuts it to [`MAX_CHARS`] characters (an excerpt of a body, to [`EXCERPT_CHARS`]),
//!   saying so.
//!
//! The user name is not a secret (it is shown by `check-config`), so it is left alone.

use secrecy::ExposeSecret;

/// The longest message, in characters, after cleaning: room for session-sync's own words
/// around what came from outside.
pub const MAX_CHARS: usize = 1000;
/// The longest excerpt of a body from outside (a vendor's error page), in characters.
pub const EXCERPT_CHARS: usize = 200;

const TRUNCATED: &str = "…[truncated]";

/// What replaces a secret value.
pub const REDACTED: &str = "[REDACTED]";

/// Secret values shorter than this are not searched for: replacing every `1` of a text
/// because a link's query had `e=1` would make the message unreadable and hide nothing.
const MIN_SECRET_CHARS: usize = 4;

/// Knows one account's secret values and cleans text with them; see the module docs.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// A redactor that knows no secret: it still bounds text, makes it one line and hides
    /// the query strings of the links it holds.
    pub fn new() -> Self {
        Redactor::default()
    }

    /// Knows the account's token.
    pub fn for_account(account: &crate::config::VendorAccount) -> Self {
        Redactor::new().with_secret(account.credentials.token.expose_secret())
    }

    /// Also hides `value`, in the forms it may take when echoed back.
    pub fn with_secret(mut self, value: &str) -> Self {
        let value = value.trim();
        if value.chars().count() < MIN_SECRET_CHARS {
            return self;
        }
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let json = serde_json::to_string(value).unwrap_or_default();
        let json = json.trim_matches('"');
        for form in [value, encoded.as_str(), json] {
            if !form.is_empty() && !self.secrets.iter().any(|s| s == form) {
                self.secrets.push(form.to_owned());
            }
        }
        // Longest first, so a secret that contains another is replaced whole.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self
    }

    /// The text, safe to log, show and store: secrets replaced, one line, bounded.
    pub fn clean(&self, text: &str) -> String {
        self.clean_bounded(text, MAX_CHARS)
    }

    fn clean_bounded(&self, text: &str, max_chars: usize) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        let text = hide_query_strings(&text);
        one_line_bounded(&text, max_chars)
    }

    /// Like [`Redactor::clean`], bounded to [`EXCERPT_CHARS`], for a body from outside.
    /// `complete` is false when `text` is only the first bytes of a longer body (read up to a
    /// cap): a secret cut off at its end could escape replacement, so the tail where one
    /// could start is dropped too.
    pub fn excerpt(&self, text: &str, complete: bool) -> String {
        let mut end = text.len();
        if !complete {
            let longest = self.secrets.first().map_or(0, String::len);
            end = end.saturating_sub(longest.saturating_sub(1));
            while !text.is_char_boundary(end) {
                end -= 1;
            }
        }
        let mut shown = self.clean_bounded(&text[..end], EXCERPT_CHARS);
        if !complete && !shown.ends_with(TRUNCATED) {
            shown.push(' ');
            shown.push_str(TRUNCATED);
        }
        shown
    }

    /// [`chain`] with this redactor's secrets.
    pub fn chain(&self, error: &(dyn std::error::Error + 'static)) -> String {
        self.clean(&chain_text(error))
    }
}

/// Cleans text that carries no account secret (see [`Redactor::new`]).
pub fn clean(text: &str) -> String {
    Redactor::new().clean(text)
}

/// An error and its causes as one clean line, `outer: cause: root`, each cause once: a cause
/// whose text its parent's message already includes (as `thiserror`'s `{source}` and sqlx's
/// wrappers do) is not repeated.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    Redactor::new().chain(error)
}

fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let shown = cause.to_string();
        if !shown.is_empty() && !text.contains(shown.as_str()) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = cause.source();
    }
    text
}

/// `…?[redacted]` in place of the query string of every http(s) URL in the text.
fn hide_query_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_url(rest) {
        let (before, from_url) = rest.split_at(start);
        out.push_str(before);
        // The URL runs to the first character that cannot be part of it.
        let end = from_url
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(from_url.len());
        let (url, after) = from_url.split_at(end);
        match url.find('?') {
            Some(q) if q + 1 < url.len() && !already_hidden(&url[q + 1..]) => {
                out.push_str(&url[..q]);
                out.push_str("?[redacted]");
            }
            _ => out.push_str(url),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn already_hidden(query: &str) -> bool {
    query
        .get(..REDACTED.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(REDACTED))
}

fn find_url(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    match (lower.find("http://"), lower.find("https://")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Control characters (newlines included) become spaces, runs of spaces one, and the text is
/// cut after `max` characters with a note.
fn one_line_bounded(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max * 4));
    let mut chars = 0;
    let mut last_space = true; // trims leading spaces
    let mut cut = false;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' {
            if last_space {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        if chars == max {
            cut = true;
            break;
        }
        out.push(c);
        chars += 1;
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    if cut {
        out.push_str(TRUNCATED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_every_echoed_form_are_replaced() {
        let r = Redactor::new().with_secret("tok/3f9a+8c77 ü");
        let text = "a tok/3f9a+8c77 ü b tok%2F3f9a%2B8c77+%C3%BC c";
        let shown = r.clean(text);
        assert_eq!(shown, "a [REDACTED] b [REDACTED] c");
        // JSON escapes a slash only optionally, a quote always.
        let r = Redactor::new().with_secret("to\"ken-1234");
        assert_eq!(
            r.clean(r#"{"echo":"to\"ken-1234"}"#),
            r#"{"echo":"[REDACTED]"}"#
        );
    }

    #[test]
    fn a_link_keeps_its_host_and_path_never_its_query() {
        assert_eq!(
            clean("got https://cdn.example/f.csv?X-Signature=abcdef123&e=1 then"),
            "got https://cdn.example/f.csv?[redacted] then"
        );
        assert_eq!(
            clean("see HTTPS://other.example/p?token=zz\"x"),
            "see HTTPS://other.example/p?[redacted]\"x"
        );
        assert_eq!(
            clean("plain http://h/p no query"),
            "plain http://h/p no query"
        );
    }

    #[test]
    fn text_becomes_one_bounded_line() {
        assert_eq!(clean("  a\r\n\tb \u{7}  c\n"), "a b c");
        let long = "é".repeat(MAX_CHARS + 10);
        let shown = clean(&long);
        assert!(shown.ends_with("…[truncated]"));
        assert_eq!(
            shown.chars().count(),
            MAX_CHARS + "…[truncated]".chars().count()
        );
        // Short values are not hunted for: they would blank out ordinary words.
        assert_eq!(Redactor::new().with_secret("1").clean("HTTP 1"), "HTTP 1");
    }

    #[test]
    fn each_cause_of_a_chain_is_named_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("opening the database: {0}")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("file.lock is locked"));
        assert_eq!(chain(&e), "opening the database: file.lock is locked");
        #[derive(Debug, thiserror::Error)]
        #[error("syncing")]
        struct Plain(#[source] std::io::Error);
        let e = Plain(std::io::Error::other("refused"));
        assert_eq!(chain(&e), "syncing: refused");
    }

    #[test]
    fn a_secret_cut_off_at_the_end_of_a_prefix_is_not_shown_in_part() {
        let r = Redactor::new().with_secret("abcdefghijkl");
        assert_eq!(r.excerpt("token: abcdefghi", false), "token …[truncated]");
        assert_eq!(
            r.excerpt("x abcdefghijkl and more text", false),
            "x [REDACTED] an …[truncated]"
        );
        assert_eq!(r.excerpt("token: abcdefghi", true), "token: abcdefghi");
        assert_eq!(r.excerpt(&"x".repeat(500), true).chars().count(), 200 + 12);
    }

    #[test]
    fn debug_shows_no_secret() {
        let r = Redactor::new().with_secret("hunter2-secret");
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
