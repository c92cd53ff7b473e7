//! What `zkrender diff` prints for one file: what is on disk against what would be written.
//!
//! Pure: the caller reads the file and renders the new contents; this module only compares
//! bytes and formats the difference. Text is compared line by line into a unified diff
//! (`--- DEST` / `+++ DEST (rendered)`, three lines of context); a missing file diffs against
//! empty. Contents that are not text (not UTF-8, or containing a NUL byte) on either side are
//! not diffed: one line says "binary files differ" with both sizes and SHA-256 digests.

use sha2::{Digest, Sha256};
use similar::TextDiff;

/// Lines of unchanged context around each change.
const CONTEXT: usize = 3;

/// The difference between `old` (the file on disk, `None` when it does not exist) and `new`
/// (the rendered contents), or `None` when writing would change nothing (the file exists
/// with exactly these bytes). `dest` is the path as shown in the headers.
///
/// A missing file is compared against empty contents, so creating a file shows every line
/// added; creating an empty file shows the two headers and the line
/// `file does not exist; it would be created empty`.
pub fn diff(dest: &str, old: Option<&[u8]>, new: &[u8]) -> Option<String> {
    if old == Some(new) {
        return None;
    }
    let old_bytes = old.unwrap_or_default();
    let mut out = format!("--- {dest}\n+++ {dest} (rendered)\n");
    match (text(old_bytes), text(new)) {
        (Some(old_text), Some(new_text)) => {
            if old_text == new_text {
                out.push_str("file does not exist; it would be created empty\n");
            } else {
                let diff = TextDiff::from_lines(old_text, new_text);
                for hunk in
                    diff.unified_diff().context_radius(CONTEXT).missing_newline_hint(true).iter_hunks()
                {
                    out.push_str(&hunk.to_string());
                }
            }
        }
        _ => {
            let on_disk = match old {
                None => "missing".to_owned(),
                Some(bytes) => describe(bytes),
            };
            out.push_str(&format!("binary files differ: on disk {on_disk}; rendered {}\n", describe(new)));
        }
    }
    Some(out)
}

/// `bytes` as text, or `None` when they are binary (not UTF-8, or holding a NUL).
fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().filter(|text| !text.contains('\0'))
}

/// `N bytes, sha256 HEX` (`1 byte` for one).
fn describe(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let n = bytes.len();
    format!("{n} byte{}, sha256 {hex}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEST: &str = "/etc/app/app.conf";

    #[test]
    fn identical_contents_have_no_diff() {
        assert_eq!(diff(DEST, Some(b"a\nb\n"), b"a\nb\n"), None);
        assert_eq!(diff(DEST, Some(b""), b""), None);
        assert_eq!(diff(DEST, Some(b"\xff\0"), b"\xff\0"), None);
    }

    #[test]
    fn changed_line_is_a_unified_diff_with_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        assert_eq!(
            diff(DEST, Some(old.as_bytes()), new.as_bytes()).unwrap(),
            concat!(
                "--- /etc/app/app.conf\n",
                "+++ /etc/app/app.conf (rendered)\n",
                "@@ -2,7 +2,7 @@\n",
                " 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n",
            )
        );
    }

    #[test]
    fn missing_file_diffs_against_empty() {
        assert_eq!(
            diff(DEST, None, b"a\nb\n").unwrap(),
            "--- /etc/app/app.conf\n+++ /etc/app/app.conf (rendered)\n@@ -0,0 +1,2 @@\n+a\n+b\n"
        );
    }

    #[test]
    fn missing_file_rendered_empty_still_differs() {
        assert_eq!(
            diff(DEST, None, b"").unwrap(),
            "--- /etc/app/app.conf\n+++ /etc/app/app.conf (rendered)\nfile does not exist; it would be created empty\n"
        );
    }

    #[test]
    fn missing_final_newline_is_shown() {
        let out = diff(DEST, Some(b"a\n"), b"a").unwrap();
        assert!(out.ends_with("-a\n+a\n\\ No newline at end of file\n"), "{out}");
    }

    #[test]
    fn binary_contents_report_sizes_and_sha256() {
        let headers = "--- /etc/app/app.conf\n+++ /etc/app/app.conf (rendered)\n";
        assert_eq!(
            diff(DEST, Some(b"abc"), b"ab\0c").unwrap(),
            format!(
                "{headers}binary files differ: \
                 on disk 3 bytes, sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad; \
                 rendered 4 bytes, sha256 6c032e631d39a14d85aff7e319546af701e26c97b57ca95fbfe9c6ba855f67bf\n"
            )
        );
        assert_eq!(
            diff(DEST, None, b"\xff\xfe").unwrap(),
            format!(
                "{headers}binary files differ: on disk missing; \
                 rendered 2 bytes, sha256 b3d510ef04275ca8e698e5b3cbb0ece3949ef9252f0cdc839e9ee347409a2209\n"
            )
        );
        // Binary on one side only is still reported as binary.
        let out = diff(DEST, Some(b"\xff"), b"text\n").unwrap();
        assert!(
            out.contains(
                "binary files differ: \
                 on disk 1 byte, sha256 a8100ae6aa1940d0b663bb31cd466142ebbdbd5187131b92d93818987832eb89; \
                 rendered 5 bytes, sha256 "
            ),
            "{out}"
        );
    }
}
