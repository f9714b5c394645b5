//! A unified diff (as `git diff` writes it) read into files and numbered
//! lines, for the change page's per-file tables and their line comments.

/// What a line of a file's diff is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Unchanged, shown for context.
    Context,
    /// Added at the head.
    Added,
    /// Removed from the base.
    Removed,
    /// A hunk's header (`@@ -1,2 +1,3 @@`).
    Hunk,
    /// A note such as "\ No newline at end of file".
    Note,
}

impl Kind {
    /// Its CSS class.
    pub(crate) fn class(self) -> &'static str {
        match self {
            Kind::Context => "ctx",
            Kind::Added => "add",
            Kind::Removed => "del",
            Kind::Hunk => "hunk",
            Kind::Note => "note",
        }
    }
}

/// One line of a file's diff, with its numbers in the old and new file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub kind: Kind,
    pub old: Option<u64>,
    pub new: Option<u64>,
    /// The line as the diff writes it, its `+`, `-` or space included.
    pub text: String,
}

/// One file of a diff.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct File {
    /// Its path at the head (at the base, for a deleted file).
    pub path: String,
    /// Whether git showed it as binary (no lines).
    pub binary: bool,
    pub lines: Vec<Line>,
    pub added: usize,
    pub removed: usize,
}

/// A path as git writes it in a diff's header: `b/…`, or quoted in C's
/// manner when it holds a quote, a backslash or a control character.
fn path_of(field: &str) -> Option<String> {
    let field = field.strip_suffix('\t').unwrap_or(field);
    if field == "/dev/null" {
        return None;
    }
    let unquoted = match field.strip_prefix('"').and_then(|f| f.strip_suffix('"')) {
        Some(quoted) => unquote(quoted),
        None => field.to_owned(),
    };
    Some(unquoted.split_once('/').map_or(unquoted.clone(), |(_, rest)| rest.to_owned()))
}

/// Undoes git's C-style quoting (`\"`, `\\`, `\t`, `\n`, octal bytes).
fn unquote(text: &str) -> String {
    let mut bytes = Vec::with_capacity(text.len());
    let mut chars = text.bytes().peekable();
    while let Some(b) = chars.next() {
        if b != b'\\' {
            bytes.push(b);
            continue;
        }
        match chars.next() {
            Some(b'n') => bytes.push(b'\n'),
            Some(b't') => bytes.push(b'\t'),
            Some(d @ b'0'..=b'7') => {
                let mut value = u32::from(d - b'0');
                for _ in 0..2 {
                    if let Some(&next @ b'0'..=b'7') = chars.peek() {
                        value = value * 8 + u32::from(next - b'0');
                        chars.next();
                    }
                }
                bytes.push(value as u8);
            }
            Some(other) => bytes.push(other),
            None => bytes.push(b'\\'),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The numbers a hunk's header starts the old and the new file at.
fn hunk_start(header: &str) -> Option<(u64, u64)> {
    let mut fields = header.split(' ');
    let _ = fields.next()?;
    let old = fields.next()?.strip_prefix('-')?;
    let new = fields.next()?.strip_prefix('+')?;
    let first = |range: &str| range.split(',').next().and_then(|n| n.parse::<u64>().ok());
    Some((first(old)?, first(new)?))
}

/// Reads a unified diff into its files.
pub(crate) fn parse(diff: &str) -> Vec<File> {
    let mut files: Vec<File> = Vec::new();
    let (mut old, mut new, mut in_hunk) = (0u64, 0u64, false);
    for line in diff.lines() {
        if line.starts_with("diff --git ") {
            files.push(File::default());
            in_hunk = false;
            continue;
        }
        let Some(file) = files.last_mut() else { continue };
        if !in_hunk {
            if let Some(path) = line.strip_prefix("+++ ").and_then(path_of) {
                file.path = path;
            } else if let Some(path) = line.strip_prefix("--- ").and_then(path_of) {
                if file.path.is_empty() {
                    file.path = path;
                }
            } else if line.starts_with("Binary files ") {
                file.binary = true;
                if file.path.is_empty() {
                    // "Binary files a/x and b/x differ": the head's path.
                    let names = line.trim_start_matches("Binary files ").trim_end_matches(" differ");
                    if let Some((_, b)) = names.rsplit_once(" and ") {
                        file.path = path_of(b).unwrap_or_default();
                    }
                }
            }
        }
        if line.starts_with("@@") {
            if let Some((o, n)) = hunk_start(line) {
                (old, new, in_hunk) = (o, n, true);
                file.lines.push(Line { kind: Kind::Hunk, old: None, new: None, text: line.to_owned() });
            }
            continue;
        }
        if !in_hunk {
            continue;
        }
        let (kind, at_old, at_new) = match line.as_bytes().first() {
            Some(b'+') => (Kind::Added, None, Some(new)),
            Some(b'-') => (Kind::Removed, Some(old), None),
            Some(b'\\') => (Kind::Note, None, None),
            _ => (Kind::Context, Some(old), Some(new)),
        };
        match kind {
            Kind::Added => {
                new += 1;
                file.added += 1;
            }
            Kind::Removed => {
                old += 1;
                file.removed += 1;
            }
            Kind::Context => {
                old += 1;
                new += 1;
            }
            _ => {}
        }
        file.lines.push(Line { kind, old: at_old, new: at_new, text: line.to_owned() });
    }
    // A file whose header named no path (a mode change only) keeps git's.
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str =
        "diff --git a/src/app.txt b/src/app.txt\nindex 1..2 100644\n--- a/src/app.txt\n+++ b/src/app.txt\n\
        @@ -1,3 +1,4 @@\n one\n-two\n+zwei\n+drei\n four\n\\ No newline at end of file\n\
        diff --git \"a/src/say \\\"hi\\\".txt\" \"b/src/say \\\"hi\\\".txt\"\nnew file mode 100644\n--- /dev/null\n\
        +++ \"b/src/say \\\"hi\\\".txt\"\n@@ -0,0 +1 @@\n+hello\n\
        diff --git a/logo.png b/logo.png\nBinary files a/logo.png and b/logo.png differ\n";

    #[test]
    fn a_diff_reads_into_files_with_each_lines_numbers() {
        let files = parse(DIFF);
        assert_eq!(files.len(), 3);
        let app = &files[0];
        assert_eq!((app.path.as_str(), app.added, app.removed), ("src/app.txt", 2, 1));
        let numbered: Vec<(Option<u64>, Option<u64>, &str)> =
            app.lines.iter().map(|l| (l.old, l.new, l.text.as_str())).collect();
        assert_eq!(
            numbered,
            [
                (None, None, "@@ -1,3 +1,4 @@"),
                (Some(1), Some(1), " one"),
                (Some(2), None, "-two"),
                (None, Some(2), "+zwei"),
                (None, Some(3), "+drei"),
                (Some(3), Some(4), " four"),
                (None, None, "\\ No newline at end of file"),
            ]
        );
        assert_eq!(files[1].path, "src/say \"hi\".txt");
        assert_eq!(files[1].lines[1].new, Some(1));
        assert!(files[2].binary && files[2].lines.is_empty());
        assert_eq!(files[2].path, "logo.png");
    }
}
