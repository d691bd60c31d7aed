//! Watched files: which files of a host root the profile records a content hash of, so that
//! drift scoring can say "this configuration file changed" (`file:PATH` findings) and a
//! rollout's remediation rule can restore it.
//!
//! A host names them in its own root, in `etc/bellwether/watch-files` (one path a line,
//! relative to the root), and the agent and `bellwether profile` add `--watch-file` (and the
//! agent its `--protect` files). Paths are checked as `restore_file` paths are: relative, no
//! `..`, no backslash, so a watched file is always one a remediation could put back.

use bellwether_model::action::check_relative_path;
use bellwether_model::ActionSpecError;

/// The file, relative to a host root, that lists the host's watched files, one path a line.
/// Collection re-reads it every time, so editing it changes what the next profile records.
pub const WATCH_FILES_FILE: &str = "etc/bellwether/watch-files";

/// The most files one profile watches; a longer list is cut with a note, so a mistaken list
/// cannot make collection read a whole tree.
pub const MAX_WATCHED: usize = 256;

/// Checks one watched path (as given to `--watch-file`); the error says what is wrong.
pub fn check_watch_path(path: &str) -> Result<(), String> {
    check_relative_path(path).map_err(|e| match e {
        ActionSpecError::BadPath { why, .. } => {
            format!("{path:?} must be a path relative to the root: {why}")
        }
        other => other.to_string(),
    })
}

/// Parses the text of a watch list: one path a line, blank lines and `#` comments ignored,
/// duplicates dropped. Returns the paths and one problem per bad line, as
/// `etc/bellwether/watch-files:LINE: …`; a bad line does not lose the good ones.
pub fn parse_watch_list(text: &str) -> (Vec<String>, Vec<String>) {
    let mut paths: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match check_watch_path(line) {
            Ok(()) => {
                if !paths.iter().any(|p| p == line) {
                    paths.push(line.to_owned());
                }
            }
            Err(e) => problems.push(format!("{WATCH_FILES_FILE}:{}: {e}", i + 1)),
        }
    }
    (paths, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_keep_good_lines_and_name_bad_ones() {
        let (paths, problems) = parse_watch_list(
            "# service config\netc/websvc.conf\n\n/etc/passwd\netc/websvc.conf  # again\n../x\netc/nginx/nginx.conf\n",
        );
        assert_eq!(paths, vec!["etc/websvc.conf", "etc/nginx/nginx.conf"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("etc/bellwether/watch-files:4: \"/etc/passwd\"")
                && problems[0].contains("absolute"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("etc/bellwether/watch-files:6:"),
            "{problems:?}"
        );
        assert!(check_watch_path("etc/a.conf").is_ok());
        assert!(check_watch_path("").unwrap_err().contains("empty"));
    }
}
