//! Path patterns in the style of `.gitignore`, for path rules and owned
//! paths.
//!
//! `*` matches within one path segment, `?` one character, `**` any number
//! of whole segments. A pattern without a `/` (other than a trailing one)
//! matches at any depth, like `.gitignore`; one with a `/` is anchored at
//! the repository's root. A trailing `/` matches a directory and everything
//! under it, and so does a pattern that names a directory of the path.

/// A validated pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    text: String,
    segments: Vec<String>,
}

impl Glob {
    /// Reads a pattern, refusing ones that could never match a path in a
    /// repository (empty, absolute with `..`, or with a `\`).
    pub fn parse(pattern: &str) -> Result<Glob, crate::InvalidInput> {
        let invalid = |why: &str| Err(crate::InvalidInput::new("path pattern", pattern, why));
        if pattern.trim().is_empty() {
            return invalid("a pattern cannot be empty");
        }
        if pattern.contains('\\') || pattern.split('/').any(|s| s == "..") {
            return invalid("use forward slashes and no '..'");
        }
        let trimmed = pattern.trim_end_matches('/');
        let directory = trimmed.len() != pattern.len();
        let anchored = trimmed.contains('/');
        let mut segments: Vec<String> =
            trimmed.trim_start_matches('/').split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        if segments.is_empty() {
            return invalid("a pattern needs at least one path segment");
        }
        if !anchored {
            segments.insert(0, "**".to_owned());
        }
        if directory || segments.last().is_some_and(|s| s != "**") {
            // Matching a directory matches everything below it.
            segments.push("**".to_owned());
            segments.push("\0optional".to_owned());
        }
        Ok(Glob { text: pattern.to_owned(), segments })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the path (relative to the repository's root, `/`-separated)
    /// matches.
    pub fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let pattern: Vec<&str> = self.segments.iter().map(String::as_str).collect();
        matches_segments(&pattern, &parts)
    }
}

fn matches_segments(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"\0optional", _)) => true,
        Some((&"**", rest)) => {
            // `**` followed by the optional marker: the file itself or anything below.
            if rest.first() == Some(&"\0optional") {
                return true;
            }
            (0..=path.len()).any(|skip| matches_segments(rest, &path[skip..]))
        }
        Some((segment, rest)) => match path.split_first() {
            Some((part, path_rest)) => {
                matches_segment(segment.as_bytes(), part.as_bytes()) && matches_segments(rest, path_rest)
            }
            None => false,
        },
    }
}

fn matches_segment(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| matches_segment(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && matches_segment(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && matches_segment(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        Glob::parse(pattern).unwrap().matches(path)
    }

    #[test]
    fn double_star_spans_directories() {
        assert!(m("src/payments/**", "src/payments/ledger.rs"));
        assert!(m("src/payments/**", "src/payments/deep/er/x.rs"));
        assert!(!m("src/payments/**", "src/paymentsx/a.rs"));
        assert!(m(".custody/**", ".custody/pipeline.toml"));
        assert!(m("src/**/*.rs", "src/a/b/c.rs"));
        assert!(m("src/**/*.rs", "src/c.rs"));
    }

    #[test]
    fn a_pattern_without_a_slash_matches_at_any_depth() {
        assert!(m("Makefile", "Makefile"));
        assert!(m("Makefile", "sub/Makefile"));
        assert!(m("*.sh", "scripts/deploy.sh"));
        assert!(!m("*.sh", "scripts/deploy.shx"));
    }

    #[test]
    fn a_slash_anchors_the_pattern_at_the_root() {
        assert!(m("scripts/ci.sh", "scripts/ci.sh"));
        assert!(!m("scripts/ci.sh", "other/scripts/ci.sh"));
        assert!(m("/lib", "lib/x.py"));
    }

    #[test]
    fn naming_a_directory_covers_what_is_inside() {
        assert!(m("lib/", "lib/a/b.py"));
        assert!(m("lib/**", "lib/a/b.py"));
        assert!(m("docs", "docs/index.md"));
    }

    #[test]
    fn stars_and_question_marks_stay_within_a_segment() {
        assert!(m("dist/*.tar.gz", "dist/app-1.0.tar.gz"));
        assert!(!m("dist/*.tar.gz", "dist/sub/app.tar.gz"));
        assert!(m("v?.txt", "v1.txt"));
    }

    #[test]
    fn patterns_that_cannot_name_a_repository_path_are_refused() {
        for bad in ["", "  ", "../x", "a\\b", "/"] {
            assert!(Glob::parse(bad).is_err(), "{bad:?}");
        }
    }
}
