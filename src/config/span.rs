//! Where a key is in the TOML text, for messages: [`LineIndex`] turns a byte offset into a
//! line and column, and [`key_at`] names the table and key whose span covers an offset, as
//! [`Problem`](super::validate::Problem) names them (`[[file]] #2 (dest = ...)`, `reload.signal`).
//!
//! Validation knows the key of each problem it finds; [`key_at`] is for the shape errors serde
//! reports with a byte span only, so the document is parsed again here with its spans kept.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Byte offset -> 1-based line and column.
pub(super) struct LineIndex<'t> {
    text: &'t str,
    /// Byte offset at which each line starts.
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        LineIndex { text, starts }
    }

    /// 1-based (line, column) of byte `offset`; the column counts characters.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&start| start <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count());
        (line, column + 1)
    }
}

/// One step of the way from the document root to a value.
#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The section and key (as [`Problem`](super::validate::Problem) names them) whose key, value or table header covers
/// byte `offset`; empty strings when the document does not parse or nothing covers it.
pub(super) fn key_at(text: &str, offset: usize) -> (String, String) {
    let Ok(doc) = DeTable::parse(text) else {
        return (String::new(), String::new());
    };
    let mut best: Option<(usize, Vec<Segment>)> = None;
    let mut trail = Vec::new();
    search_table(doc.get_ref(), offset, &mut trail, &mut best);
    let Some((_, trail)) = best else {
        return (String::new(), String::new());
    };
    name_trail(doc.get_ref(), &trail)
}

/// Whether `span` covers `offset` (an empty span covers its start).
fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// Records in `best` the narrowest key/value span covering `offset`, with its trail. On a
/// tie the later, deeper one wins: an array of tables and its first table share a span.
fn consider(span: Range<usize>, offset: usize, trail: &[Segment], best: &mut Option<(usize, Vec<Segment>)>) {
    if covers(&span, offset) && best.as_ref().is_none_or(|(len, _)| span.len() <= *len) {
        *best = Some((span.len(), trail.to_vec()));
    }
}

fn search_table(
    table: &DeTable<'_>,
    offset: usize,
    trail: &mut Vec<Segment>,
    best: &mut Option<(usize, Vec<Segment>)>,
) {
    for (key, value) in table.iter() {
        trail.push(Segment::Key(key.get_ref().to_string()));
        consider(key.span(), offset, trail, best);
        search_value(value, offset, trail, best);
        trail.pop();
    }
}

fn search_value(
    value: &Spanned<DeValue<'_>>,
    offset: usize,
    trail: &mut Vec<Segment>,
    best: &mut Option<(usize, Vec<Segment>)>,
) {
    // A table's span is its header (`[file.reload]`), an array of tables' the first header.
    consider(value.span(), offset, trail, best);
    match value.get_ref() {
        DeValue::Table(table) => search_table(table, offset, trail, best),
        DeValue::Array(array) => {
            for (index, item) in array.iter().enumerate() {
                trail.push(Segment::Index(index));
                search_value(item, offset, trail, best);
                trail.pop();
            }
        }
        _ => {}
    }
}

/// Turns a trail into (section, key): `file`, 1, `reload`, `signal` becomes
/// (`[[file]] #2 (dest = ...)`, `reload.signal`).
fn name_trail(doc: &DeTable<'_>, trail: &[Segment]) -> (String, String) {
    let (section, rest) = match trail {
        [Segment::Key(k), rest @ ..] if k == "zookeeper" || k == "agent" => (format!("[{k}]"), rest),
        [Segment::Key(k), Segment::Index(i), rest @ ..] if k == "file" => {
            let dest = doc
                .get("file")
                .and_then(|files| files.get_ref().get(*i))
                .and_then(|file| file.get_ref().get("dest"))
                .and_then(|dest| dest.get_ref().as_str());
            (file_section(*i, dest), rest)
        }
        _ => (String::new(), trail),
    };
    let key = rest
        .iter()
        .map(|segment| match segment {
            Segment::Key(k) => k.clone(),
            Segment::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".");
    (section, key)
}

/// `[[file]] #N (dest = DEST)`, numbered from 1, with `dest` as written.
pub(super) fn file_section(index: usize, dest: Option<&str>) -> String {
    match dest {
        Some(dest) => format!("[[file]] #{} (dest = {dest})", index + 1),
        None => format!("[[file]] #{}", index + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters() {
        let lines = LineIndex::new("ab\nçé = 1\n");
        assert_eq!(lines.position(0), (1, 1));
        assert_eq!(lines.position(3), (2, 1));
        assert_eq!(lines.position(7), (2, 3));
        assert_eq!(lines.position(100), (3, 1));
    }

    /// (section, key) at the first byte of `needle` in `text`.
    fn key_of(text: &str, needle: &str) -> (String, String) {
        key_at(text, text.find(needle).expect("needle in text"))
    }

    #[test]
    fn keys_are_named_by_section() {
        let text = "[zookeeper]\nhosts = \"h:1\"\n\n[[file]]\ndest = \"/a\"\nznode = \"/a\"\n\n\
                    [[file]]\ndest = \"/b\"\nznode = \"/b\"\n[file.reload]\nsignal = \"HUP\"\n";
        let named = |section: &str, key: &str| (section.to_owned(), key.to_owned());
        assert_eq!(key_of(text, "hosts"), named("[zookeeper]", "hosts"));
        assert_eq!(key_of(text, "\"h:1\""), named("[zookeeper]", "hosts"));
        assert_eq!(key_of(text, "znode = \"/b\""), named("[[file]] #2 (dest = /b)", "znode"));
        assert_eq!(key_of(text, "\"HUP\""), named("[[file]] #2 (dest = /b)", "reload.signal"));
        assert_eq!(key_of(text, "[file.reload]"), named("[[file]] #2 (dest = /b)", "reload"));
    }

    #[test]
    fn array_items_are_numbered_and_unparsable_text_names_nothing() {
        let text = "[zookeeper]\nhosts = [\"a:1\", \"b:2\"]\n";
        assert_eq!(key_of(text, "\"b:2\""), ("[zookeeper]".to_owned(), "hosts.1".to_owned()));
        assert_eq!(key_at("[zookeeper\nhosts = 1", 12), (String::new(), String::new()));
    }

    #[test]
    fn file_sections_show_dest_as_written() {
        assert_eq!(file_section(0, Some("app.conf")), "[[file]] #1 (dest = app.conf)");
        assert_eq!(file_section(2, None), "[[file]] #3");
    }
}
