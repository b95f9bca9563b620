//! A listener's expected clients: `expect = [...]` or `expect_file`.
//!
//! Invariants of a list that passes: native listeners only (legacy and raw
//! clients are named by their peer address, whose port changes with every
//! connection, so they cannot be expected by name); every id is what a
//! HELLO may carry (1..=64 printable ASCII characters, no space); no id
//! twice; file order kept.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::span::Source;
use super::ConfigError;
use crate::wire::Protocol;

/// Longest client id (PROTOCOL.md, HELLO).
const MAX_ID_LEN: usize = 64;

/// What [`expected`] reads from one listener table.
pub(super) struct RawExpect<'a> {
    pub(super) list: Option<&'a Spanned<Vec<Spanned<String>>>>,
    pub(super) file: Option<&'a Spanned<String>>,
}

/// The expected ids of the listener whose keys start with `prefix`.
pub(super) fn expected(
    source: &Source<'_>,
    prefix: &str,
    raw: RawExpect<'_>,
    protocol: Protocol,
    base_dir: &Path,
) -> Result<Vec<String>, ConfigError> {
    let key = |field: &str| format!("{prefix}.{field}");
    let span = match (raw.list, raw.file) {
        (None, None) => return Ok(Vec::new()),
        (Some(_), Some(file)) => {
            return Err(source.at(file, &key("expect_file"), "give either expect or expect_file, not both".into()))
        }
        (Some(list), None) => list.span(),
        (None, Some(file)) => file.span(),
    };
    if protocol != Protocol::Native {
        let field = if raw.list.is_some() { "expect" } else { "expect_file" };
        return Err(source.error(
            Some(span),
            Some(key(field)),
            format!(
                "{field} is for native listeners: {protocol} clients are named by their peer address, whose \
                 port changes with every connection"
            ),
        ));
    }
    let mut ids: Vec<String> = Vec::new();
    let mut add = |id: &str, at: Range<usize>, field: &str, line: Option<usize>| {
        let place = line.map_or_else(String::new, |n| format!("line {n}: "));
        if let Err(why) = check_id(id) {
            return Err(source.error(Some(at), Some(key(field)), format!("{place}{why}")));
        }
        if ids.iter().any(|i| i == id) {
            return Err(source.error(Some(at), Some(key(field)), format!("{place}{id:?} is listed twice")));
        }
        ids.push(id.to_owned());
        Ok(())
    };
    if let Some(list) = raw.list {
        for (i, id) in list.get_ref().iter().enumerate() {
            add(id.get_ref(), id.span(), &format!("expect[{i}]"), None)?;
        }
    }
    if let Some(file) = raw.file {
        let path = base_dir.join(file.get_ref());
        let shown = path.display();
        let bytes = super::file::read_capped(&path, super::file::MAX_TOKENS_FILE_BYTES)
            .map_err(|e| source.at(file, &key("expect_file"), format!("cannot read expect file {shown}: {e}")))?;
        let text = String::from_utf8_lossy(&bytes);
        for (number, line) in text.lines().enumerate() {
            let id = line.trim();
            if id.is_empty() || id.starts_with('#') {
                continue;
            }
            add(id, file.span(), "expect_file", Some(number + 1))
                .map_err(|e| ConfigError { message: format!("expect file {shown}: {}", e.message), ..e })?;
        }
    }
    Ok(ids)
}

/// A HELLO id: 1..=64 printable ASCII characters, no space.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{id:?} is not a client id: 1..=64 printable ASCII characters, no space"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::load;
    use super::super::tests::{assert_err, listener, only, parse_err, parse_ok, temp_dir};

    #[test]
    fn expect_lists_ids_in_order() {
        assert_eq!(only(&listener("expect = [\"dev-2\", \"dev-1\"]\n")).expect, ["dev-2", "dev-1"]);
        assert!(only(&listener("")).expect.is_empty());
    }

    #[test]
    fn expect_round_trips_through_print_config() {
        let config = parse_ok(&listener("expect = [\"dev-2\", \"a\\\"b\"]\n"));
        let printed = super::super::to_toml(&config, "test");
        assert_eq!(parse_ok(&printed), config, "{printed}");
    }

    #[test]
    fn bad_lists_are_refused_with_their_line() {
        assert_err(&listener("expect = [\"a\", \"a\"]\n"), 4, "listener[0].expect[1]", "listed twice");
        assert_err(&listener("expect = [\"has space\"]\n"), 4, "listener[0].expect[0]", "not a client id");
        let legacy = listener("protocol = \"legacy\"\nexpect = [\"a\"]\n");
        assert_err(&legacy, 5, "listener[0].expect", "for native listeners");
        let both = listener("expect = [\"a\"]\nexpect_file = \"x\"\n");
        assert_err(&both, 5, "listener[0].expect_file", "not both");
        let e = parse_err(&listener("expect_file = \"absent\"\n"));
        assert!(e.message.contains("cannot read expect file"), "{e}");
    }

    #[test]
    fn expect_files_hold_one_id_per_line() {
        let dir = temp_dir("expect");
        fs::write(dir.join("fleet"), "# the fleet\ndev-1\n\n  dev-2  \n").unwrap();
        fs::write(dir.join("heartbeatd.toml"), listener("expect_file = \"fleet\"\n")).unwrap();
        assert_eq!(load(&dir.join("heartbeatd.toml")).unwrap().listeners[0].expect, ["dev-1", "dev-2"]);
        fs::write(dir.join("fleet"), "dev-1\ndev-1\n").unwrap();
        let e = load(&dir.join("heartbeatd.toml")).unwrap_err();
        assert!(e.message.contains("line 2: \"dev-1\" is listed twice"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
