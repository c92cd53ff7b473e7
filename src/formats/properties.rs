//! Java `.properties`: the writer (`a.b.c=value` lines, escaped as `java.util.Properties`
//! reads them) and a reader with Java's rules.

use super::*;

/// Appends `key=value\n` with `Properties.store`'s escaping (see the module docs).
pub(super) fn write_property(out: &mut String, key: &str, value: &str) {
    escape_property(out, key, true);
    out.push('=');
    escape_property(out, value, false);
    out.push('\n');
}

fn escape_property(out: &mut String, text: &str, is_key: bool) {
    for (i, c) in text.chars().enumerate() {
        match c {
            ' ' if is_key || i == 0 => out.push_str(r"\ "),
            '\t' => out.push_str(r"\t"),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            '\x0c' => out.push_str(r"\f"),
            '\\' | '=' | ':' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            c if !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            c => out.push(c),
        }
    }
}

/// Java's whitespace in `.properties`: space, tab, form feed.
fn is_property_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0c')
}

/// Parses `.properties` text as `Properties.load(Reader)` does (see the module docs), giving
/// every `(key, value)` in file order, repeated keys included.
///
/// # Errors
/// [`FormatError::Properties`] naming the line of a malformed `\uXXXX` escape or of one that
/// leaves half of a UTF-16 surrogate pair.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, FormatError> {
    let chars: Vec<char> = text.chars().collect();
    let mut pairs = Vec::new();
    let mut i = 0;
    let mut line = 1;
    // Consumes a line terminator at `i` (`\n`, `\r` or `\r\n`), if there is one.
    let end_of_line = |i: &mut usize, line: &mut usize| {
        if chars.get(*i) == Some(&'\r') {
            *i += 1;
            if chars.get(*i) == Some(&'\n') {
                *i += 1;
            }
            *line += 1;
        } else if chars.get(*i) == Some(&'\n') {
            *i += 1;
            *line += 1;
        }
    };
    while i < chars.len() {
        while i < chars.len() && is_property_space(chars[i]) {
            i += 1;
        }
        match chars.get(i) {
            None => break,
            Some('\r' | '\n') => {
                end_of_line(&mut i, &mut line);
                continue;
            }
            Some('#' | '!') => {
                while i < chars.len() && !matches!(chars[i], '\r' | '\n') {
                    i += 1;
                }
                end_of_line(&mut i, &mut line);
                continue;
            }
            Some(_) => {}
        }
        // One logical line: natural lines joined where one ends in an odd number of `\`.
        let first_line = line;
        let mut logical: Vec<char> = Vec::new();
        loop {
            let mut backslashes = 0usize;
            while i < chars.len() && !matches!(chars[i], '\r' | '\n') {
                backslashes = if chars[i] == '\\' { backslashes + 1 } else { 0 };
                logical.push(chars[i]);
                i += 1;
            }
            if backslashes.is_multiple_of(2) {
                end_of_line(&mut i, &mut line);
                break;
            }
            logical.pop(); // the continuation backslash
            if i >= chars.len() {
                break;
            }
            end_of_line(&mut i, &mut line);
            while i < chars.len() && is_property_space(chars[i]) {
                i += 1;
            }
        }
        let (key, value) = split_property(&logical);
        pairs.push((unescape_property(key, first_line)?, unescape_property(value, first_line)?));
    }
    Ok(pairs)
}

/// Splits a logical line into its still-escaped key and value.
fn split_property(line: &[char]) -> (&[char], &[char]) {
    let mut key_end = 0;
    let mut value_start = line.len();
    let mut has_separator = false;
    let mut escaped = false;
    while key_end < line.len() {
        let c = line[key_end];
        if !escaped && (c == '=' || c == ':') {
            value_start = key_end + 1;
            has_separator = true;
            break;
        }
        if !escaped && is_property_space(c) {
            value_start = key_end + 1;
            break;
        }
        escaped = c == '\\' && !escaped;
        key_end += 1;
    }
    while value_start < line.len() {
        let c = line[value_start];
        if !is_property_space(c) {
            if !has_separator && (c == '=' || c == ':') {
                has_separator = true;
            } else {
                break;
            }
        }
        value_start += 1;
    }
    (&line[..key_end], &line[value_start.min(line.len())..])
}

fn unescape_property(text: &[char], line: usize) -> Result<String, FormatError> {
    let mut units: Vec<u16> = Vec::with_capacity(text.len());
    let mut buf = [0u16; 2];
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        i += 1;
        if c != '\\' {
            units.extend_from_slice(c.encode_utf16(&mut buf));
            continue;
        }
        let Some(&escaped) = text.get(i) else { break };
        i += 1;
        let plain = match escaped {
            't' => '\t',
            'n' => '\n',
            'r' => '\r',
            'f' => '\x0c',
            'u' => {
                let hex: String = text[i..(i + 4).min(text.len())].iter().collect();
                let unit = (hex.len() == 4 && hex.chars().all(|c| c.is_ascii_hexdigit()))
                    .then(|| u16::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| FormatError::Properties {
                        line,
                        message: format!("malformed \\uxxxx escape \"\\u{hex}\""),
                    })?;
                units.push(unit);
                i += 4;
                continue;
            }
            other => other,
        };
        units.extend_from_slice(plain.encode_utf16(&mut buf));
    }
    String::from_utf16(&units).map_err(|_| FormatError::Properties {
        line,
        message: "\\u escapes leave half of a UTF-16 surrogate pair".to_owned(),
    })
}
