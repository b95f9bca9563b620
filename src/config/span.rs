//! Where an error is: byte spans of the config text → file, line and key.
//!
//! A config may be several files (the main file and its `conf.d/`
//! drop-ins). Each file is parsed on its own, then its spans are shifted by
//! the file's base offset, so one offset names one byte of one file: the
//! files lie end to end in a single offset space.
//!
//! Invariants: a line is 1-based and always within its file's text (an
//! offset past the end counts the whole text); a key is recovered from the
//! TOML structure only, never guessed from the message, so an error whose
//! span lies in invalid TOML has no key rather than a wrong one, with one
//! exception: a duplicate table or key, whose line is read as text.

use std::ops::Range;

use toml::Spanned;

use super::ConfigError;

/// The config text being validated: turns spans into files and lines for
/// errors.
pub(super) struct Source<'a> {
    /// At least one file; bases ascend.
    files: Vec<File<'a>>,
}

/// One file of a [`Source`].
struct File<'a> {
    /// Offset of the file's first byte in the shared offset space.
    base: usize,
    text: &'a str,
    origin: &'a str,
}

impl<'a> Source<'a> {
    /// The text, named `origin` in errors.
    pub(super) fn new(text: &'a str, origin: &'a str) -> Source<'a> {
        Source { files: vec![File { base: 0, text, origin }] }
    }

    /// Adds a file after the others; returns its base offset, by which its
    /// own spans must be shifted. A gap byte between files keeps an empty
    /// file's offset distinct from the next file's.
    pub(super) fn push(&mut self, text: &'a str, origin: &'a str) -> usize {
        let last = self.files.last().map_or(0, |f| f.base + f.text.len() + 1);
        self.files.push(File { base: last, text, origin });
        last
    }

    /// The file holding `offset`.
    fn file(&self, offset: usize) -> &File<'a> {
        &self.files[self.file_index(offset)]
    }

    /// Which file holds `offset`, as an index: 0 is the main file.
    pub(super) fn file_index(&self, offset: usize) -> usize {
        self.files.iter().rposition(|f| f.base <= offset).unwrap_or(0)
    }

    /// The name of the file holding `offset`.
    pub(super) fn origin_of(&self, offset: usize) -> &'a str {
        self.file(offset).origin
    }

    /// Where `offset` is, as seen from an error at `from`: `on line 3` in
    /// the same file, `at path:3` in another.
    pub(super) fn place(&self, offset: usize, from: usize) -> String {
        let line = self.line_of(offset);
        if self.file_index(offset) == self.file_index(from) {
            format!("on line {line}")
        } else {
            format!("at {}:{line}", self.origin_of(offset))
        }
    }

    /// An error at the start of `span`, if known.
    pub(super) fn error(
        &self,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let origin = span.as_ref().map_or(self.files[0].origin, |span| self.origin_of(span.start));
        ConfigError {
            origin: origin.to_owned(),
            line: span.map(|span| self.line_of(span.start)),
            key,
            message: message.into(),
        }
    }

    /// An error about `value`, whose key is `key`.
    pub(super) fn at<T>(&self, value: &Spanned<T>, key: &str, message: String) -> ConfigError {
        self.error(Some(value.span()), Some(key.to_owned()), message)
    }

    /// 1-based line of byte `offset`, within its file.
    pub(super) fn line_of(&self, offset: usize) -> usize {
        let file = self.file(offset);
        let text = file.text.as_bytes();
        let before = text.get(..offset.saturating_sub(file.base)).unwrap_or(text);
        1 + before.iter().filter(|&&b| b == b'\n').count()
    }

    /// The text of a one-file source: toml errors come from parsing one
    /// file, with that file's own spans.
    fn text(&self) -> &'a str {
        self.files[0].text
    }

    /// A syntax, type or unknown-key error from toml, on a one-file source.
    /// Its message has no key,
    /// so the key is recovered from the span when the text is valid TOML.
    /// Its words are serde's, so they are put in the operator's terms
    /// ([`invalid_type`], [`Source::duplicate`]) where the shape is known.
    pub(super) fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span();
        if error.message() == "duplicate key" {
            if let Some(e) = span.as_ref().and_then(|span| self.duplicate(span.start)) {
                return e;
            }
        }
        let key = span.as_ref().and_then(|span| key_at(self.text(), span.start));
        let message = match &key {
            Some(key) => invalid_type(key, error.message()).unwrap_or_else(|| error.message().to_owned()),
            None => error.message().to_owned(),
        };
        self.error(span, key, message)
    }

    /// A duplicated table header or key at byte `offset`: names it and the
    /// line where it first appeared. `None` when the text there is neither.
    ///
    /// The text is invalid TOML, so this reads lines, not the TOML tree: a
    /// header is a line `[name]`, a key is `name =` under the last header.
    fn duplicate(&self, offset: usize) -> Option<ConfigError> {
        let lines: Vec<&str> = self.text().lines().collect();
        let at = self.line_of(offset) - 1;
        let here = lines.get(at)?;
        let error = |key: String, message: String| Some(self.error(Some(offset..offset), Some(key), message));
        if let Some(table) = header(here) {
            // A sub-table of an array table (`[listener.tcp]`) belongs to
            // the latest entry: an earlier entry's is no duplicate.
            let from = match array_parent(&lines[..at], table.name) {
                Some(parent) => last_array_header(&lines[..at], parent).unwrap_or(0),
                None => 0,
            };
            let first = (from..at).find(|&i| header(lines[i]).is_some_and(|h| h == table))?;
            return error(
                table_path(&lines, at)?,
                format!("[{}] appears twice (first on line {}): merge the two into one table", table.name, first + 1),
            );
        }
        let (key, _) = here.split_once('=')?;
        let key = key.trim();
        // The key's table: the last header above it, if any.
        let table_at = (0..at).rev().find(|&i| header(lines[i]).is_some());
        let from = table_at.map_or(0, |i| i + 1);
        let first = (from..at).find(|&i| lines[i].split_once('=').is_some_and(|(k, _)| k.trim() == key))?;
        let (dotted, within) = match table_at.and_then(|i| Some((table_path(&lines, i)?, header(lines[i])?))) {
            Some((path, table)) => (format!("{path}.{key}"), table.written()),
            None => (key.to_owned(), "the top level".to_owned()),
        };
        error(dotted, format!("{key} is set twice in {within} (first on line {}): keep one", first + 1))
    }
}

/// One table of the config being validated (`listener[0]`, `hook[2]`):
/// its errors name `prefix.field`.
pub(super) struct Table<'a> {
    pub(super) source: &'a Source<'a>,
    /// The table's name in keys, `listener[0]`.
    pub(super) prefix: String,
}

impl Table<'_> {
    /// `prefix.field`.
    pub(super) fn key(&self, field: &str) -> String {
        format!("{}.{field}", self.prefix)
    }

    /// An error about `value` of `field`.
    pub(super) fn at<T>(&self, value: &Spanned<T>, field: &str, message: String) -> ConfigError {
        self.source.at(value, &self.key(field), message)
    }

    /// An error about `field` at `span`.
    pub(super) fn error_at(&self, span: Range<usize>, field: &str, message: String) -> ConfigError {
        self.source.error(Some(span), Some(self.key(field)), message)
    }
}

/// A table header line: `[name]`, or `[[name]]` for an array entry.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Header<'t> {
    name: &'t str,
    array: bool,
}

impl Header<'_> {
    /// The header as written: `[daemon]`, `[[listener]]`.
    fn written(&self) -> String {
        if self.array {
            format!("[[{}]]", self.name)
        } else {
            format!("[{}]", self.name)
        }
    }
}

/// The header on `line`, if it is one.
fn header(line: &str) -> Option<Header<'_>> {
    let line = line.trim();
    let (name, array) = match line.strip_prefix("[[") {
        Some(rest) => (rest.split("]]").next()?, true),
        None => (line.strip_prefix('[')?.split(']').next()?, false),
    };
    let name = name.trim();
    (!name.is_empty()).then_some(Header { name, array })
}

/// Line index of the last `[[name]]` among `lines`.
fn last_array_header(lines: &[&str], name: &str) -> Option<usize> {
    lines.iter().rposition(|l| header(l) == Some(Header { name, array: true }))
}

/// For `listener.tcp`, the array `listener` when `lines` have a
/// `[[listener]]`.
fn array_parent<'n>(lines: &[&str], name: &'n str) -> Option<&'n str> {
    let (parent, _) = name.split_once('.')?;
    last_array_header(lines, parent).map(|_| parent)
}

/// The dotted key of the table whose header is `lines[at]`, with array
/// entries numbered as [`key_at`] numbers them: `listener[1]`,
/// `listener[1].tcp`, `daemon`.
fn table_path(lines: &[&str], at: usize) -> Option<String> {
    let table = header(lines[at])?;
    let entry = |name: &str| {
        let count = lines[..=at].iter().filter(|l| header(l) == Some(Header { name, array: true })).count();
        count.saturating_sub(1)
    };
    if table.array {
        return Some(format!("{}[{}]", table.name, entry(table.name)));
    }
    Some(match array_parent(&lines[..at], table.name) {
        Some(parent) => format!("{parent}[{}]{}", entry(parent), &table.name[parent.len()..]),
        None => table.name.to_owned(),
    })
}

/// Keys whose value is a duration string, and an example of each.
const DURATION_EXAMPLES: [(&str, &str); 9] = [
    ("tick", "\"100ms\""),
    ("shutdown_grace", "\"5s\""),
    ("interval", "\"3s\""),
    ("timeout", "\"15s\""),
    ("handshake_timeout", "\"5s\""),
    ("keepalive_idle", "\"15s\""),
    ("keepalive_interval", "\"5s\""),
    ("user_timeout", "\"30s\""),
    ("request_timeout", "\"10s\""),
];

/// An example value for the other scalar keys, at or near their defaults.
const OTHER_EXAMPLES: [(&str, &str); 20] = [
    ("max_clients", "65536"),
    ("max_per_address", "0"),
    ("log_level", "\"info\""),
    ("name", "\"main\""),
    ("address", "\"127.0.0.1:7700\""),
    ("protocol", "\"native\""),
    ("misses", "5"),
    ("server_ping", "true"),
    ("echo", "true"),
    ("max_frame", "1024"),
    ("tokens", "[\"s3cret\"]"),
    ("tokens_file", "\"tokens\""),
    ("path", "\"/heartbeat\""),
    ("allowed_origins", "[\"https://panel.example\"]"),
    ("keepalive_count", "3"),
    ("nodelay", "true"),
    ("max_connections", "64"),
    ("history", "1024"),
    ("subscriber_buffer", "262144"),
    ("token_file", "\"api-token\""),
];

/// serde's "invalid type: integer `3`, expected a string" for `key`, in
/// the operator's words: what the key takes, what it got, an example.
/// `None` for any other message.
fn invalid_type(key: &str, message: &str) -> Option<String> {
    let (found, expected) = message.strip_prefix("invalid type: ")?.split_once(", expected ")?;
    let found = match found.split_once(' ') {
        _ if found == "map" => "a table".to_owned(),
        _ if found == "sequence" => "a list".to_owned(),
        Some(("floating", rest)) => format!("the number {}", rest.trim_start_matches("point ").trim_matches('`')),
        Some((kind, value)) => format!("the {kind} {}", value.trim_matches('`')),
        None => found.to_owned(),
    };
    if key == "listener" && expected == "a sequence" {
        let written = if found == "a table" { "[listener]".to_owned() } else { found };
        return Some(format!(
            "a listener is written [[listener]] (double brackets: one entry of a list of tables), not {written}"
        ));
    }
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let duration = DURATION_EXAMPLES.iter().find(|(name, _)| *name == leaf);
    let takes = match expected {
        _ if duration.is_some() => "a duration in quotes with a unit",
        "i64" => "a whole number without quotes",
        "a boolean" => "true or false without quotes",
        "a string" => "a string in quotes",
        "a sequence" => "a list in brackets",
        _ if expected.starts_with("struct ") => {
            return Some(format!("{leaf} takes a table, not {found}; write it as a [{key}] header and its keys"));
        }
        _ => return None,
    };
    let example = duration.or_else(|| OTHER_EXAMPLES.iter().find(|(name, _)| *name == leaf));
    Some(match example {
        Some((name, value)) => format!("{leaf} takes {takes}, not {found}; write e.g. {name} = {value}"),
        None => format!("{leaf} takes {takes}, not {found}"),
    })
}

/// The dotted key path of the entry at byte `offset`, or `None` when the
/// text is not valid TOML.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let root = toml::de::DeTable::parse(text).ok()?;
    key_in_table(root.get_ref(), offset)
}

/// Searches a table: the deepest entry whose key or value covers `offset`.
fn key_in_table(table: &toml::de::DeTable<'_>, offset: usize) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let name = key.get_ref();
        // Look inside first: a table's own span is only its header, so a
        // child may match where the parent does not.
        if let Some(rest) = key_in_value(value.get_ref(), offset) {
            return Some(format!("{name}{rest}"));
        }
        (covers(&key.span(), offset) || covers(&value.span(), offset)).then(|| name.to_string())
    })
}

/// Searches inside a value; returns the path below it (`.key`, `[i]`).
fn key_in_value(value: &toml::de::DeValue<'_>, offset: usize) -> Option<String> {
    match value {
        toml::de::DeValue::Table(table) => key_in_table(table, offset).map(|key| format!(".{key}")),
        toml::de::DeValue::Array(items) => {
            items.iter().enumerate().find_map(|(i, item)| match key_in_value(item.get_ref(), offset) {
                Some(rest) => Some(format!("[{i}]{rest}")),
                None => covers(&item.span(), offset).then(|| format!("[{i}]")),
            })
        }
        _ => None,
    }
}

/// Whether `span` covers `offset`; an empty span covers its start.
fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_err, listener, parse_err};
    use super::*;

    #[test]
    fn lines_are_one_based_and_clamped() {
        let source = Source::new("a\nb\n\nc", "t");
        let lines: Vec<usize> = (0..=7).map(|offset| source.line_of(offset)).collect();
        assert_eq!(lines, [1, 1, 2, 2, 3, 4, 4, 4]);
    }

    #[test]
    fn errors_name_origin_line_and_key() {
        let source = Source::new("x = 1\ny = 2\n", "f.toml");
        let e = source.error(Some(6..11), Some("y".into()), "bad");
        assert_eq!(e.to_string(), "f.toml:2: y: bad");
        assert_eq!(source.error(None, None, "bad").to_string(), "f.toml: bad");
    }

    #[test]
    fn keys_are_found_by_offset() {
        let text = "top = 1\n[daemon]\ntick = \"1s\"\n[[listener]]\nname = \"a\"\n\
                    [[listener]]\ntokens = [\"x\", \"y\"]\n[listener.tcp]\nnodelay = true\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap());
        assert_eq!(at("top").as_deref(), Some("top"));
        assert_eq!(at("tick").as_deref(), Some("daemon.tick"));
        assert_eq!(at("\"1s\"").as_deref(), Some("daemon.tick"));
        assert_eq!(at("name").as_deref(), Some("listener[0].name"));
        assert_eq!(at("\"y\"").as_deref(), Some("listener[1].tokens[1]"));
        assert_eq!(at("nodelay").as_deref(), Some("listener[1].tcp.nodelay"));
        assert_eq!(key_at("x = \n", 4), None, "invalid TOML has no key");
    }

    #[test]
    fn empty_spans_cover_their_start() {
        assert!(covers(&(3..3), 3));
        assert!(!covers(&(3..3), 4));
        assert!(covers(&(3..5), 4) && !covers(&(3..5), 5) && !covers(&(3..5), 2));
    }

    #[test]
    fn syntax_error_has_line_and_toml_message() {
        let e = parse_err("[daemon]\ntick = \"1s\"\nmax_clients = \n");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key, None);
        assert!(!e.message.is_empty());
        assert!(e.to_string().starts_with("test.toml:3: "), "{e}");
    }

    #[test]
    fn unknown_keys() {
        assert_err("[daemon]\ntick = \"1s\"\nbogus = 1\n", 3, "daemon.bogus", "unknown field `bogus`");
        assert_err(&listener("\n\n\ninterval = \"1s\"\nmisess = 3\n"), 8, "listener[0].misess", "unknown field");
        assert_err(
            &listener("[listener.tcp]\nnodelay = true\nkeepalive = \"1s\"\n"),
            6,
            "listener[0].tcp.keepalive",
            "unknown field",
        );
        assert_err(&listener("tcp = { nodelay = true, idle = 1 }\n"), 4, "listener[0].tcp.idle", "unknown field");
        assert_err(&format!("{}listeners = 1\n", listener("")), 4, "listener[0].listeners", "unknown field");
        assert_err("deamon = 1\n", 1, "deamon", "unknown field");
        // In the second listener.
        let two =
            format!("{}{}", listener(""), listener("prot = 1\n").replace("\"a\"", "\"b\"").replace("7700", "7701"));
        assert_err(&two, 7, "listener[1].prot", "unknown field");
    }

    #[test]
    fn wrong_types() {
        assert_err("[daemon]\ntick = 5\n", 2, "daemon.tick", "tick takes a duration in quotes with a unit");
        assert_err(
            "daemon = 5\n",
            1,
            "daemon",
            "daemon takes a table, not the integer 5; write it as a [daemon] header",
        );
        assert_err(&listener("echo = \"yes\"\n"), 4, "listener[0].echo", "takes true or false");
        assert_err(
            &listener("tokens = [\"x\",\n  3]\n"),
            5,
            "listener[0].tokens[1]",
            "tokens[1] takes a string in quotes, not the integer 3",
        );
        assert_err(
            &listener("misses = 2.5\n"),
            4,
            "listener[0].misses",
            "whole number without quotes, not the number 2.5",
        );
        assert_err("listener = 3\n", 1, "listener", "[[listener]] (double brackets");
    }
}
