//! Log lines for systemd's journal: when stderr is the journal's stream (`JOURNAL_STREAM`,
//! systemd.exec(5)), each line starts with its syslog priority (`<3>` error ... `<7>` debug,
//! sd-daemon(3)), so that `journalctl -p err` filters the service's errors; the journal keeps
//! its own timestamps. Anywhere else (a terminal, a file, the HIL guest) the lines are as before.

use std::os::unix::fs::MetadataExt;

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` names its device and inode
/// ("DEV:INO"), which stderr's must match (a child whose stderr was redirected must not take
/// the variable it inherited for its own).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    names_stream(&value.to_string_lossy(), meta.dev(), meta.ino())
}

/// Whether a `JOURNAL_STREAM` value names the stream of device `dev` and inode `ino`.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// The syslog priority of a log level (sd-daemon(3) prefixes).
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// One log record as the journal's stream takes it: every line of a multi-line message (a
/// state dump) carries the record's priority, since the journal reads each line as an entry of
/// its own, and a continuation line without a prefix would be stored at info.
pub fn line(level: log::Level, target: &str, message: &str) -> String {
    let priority = priority(level);
    let mut out = String::with_capacity(message.len() + target.len() + 8);
    for (i, text) in message.split('\n').enumerate() {
        if i == 0 {
            out.push_str(&format!("<{priority}>{target}: {text}\n"));
        } else {
            out.push_str(&format!("<{priority}>{text}\n"));
        }
    }
    out
}

/// A message for the operator written straight to stderr, not through the logger (a refused
/// configuration, a start that failed): when stderr is the journal's stream each of its lines
/// carries the error priority, so that `journalctl -p err` shows it (without the prefix the
/// journal stores the line at info).
pub fn error_to_stderr(text: &str) {
    eprint!("{}", error_text(stderr_is_journal(), text));
}

/// What [`error_to_stderr`] writes.
fn error_text(journal: bool, text: &str) -> String {
    if journal {
        let err = priority(log::Level::Error);
        text.split('\n').map(|l| format!("<{err}>{l}\n")).collect()
    } else {
        format!("{text}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_and_priorities() {
        assert!(names_stream("12:3456", 12, 3456));
        assert!(
            !names_stream("12:3456", 12, 3457),
            "another stream (stderr redirected)"
        );
        assert!(!names_stream("12", 12, 3456));
        assert!(!names_stream("", 0, 0));
        assert!(!names_stream("x:y", 0, 0));
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Warn), 4);
        assert_eq!(priority(log::Level::Info), 6);
        assert_eq!(priority(log::Level::Debug), 7);
    }

    #[test]
    fn an_error_written_to_the_journal_s_stream_carries_the_error_priority() {
        assert_eq!(error_text(true, "serve: bad key"), "<3>serve: bad key\n");
        assert_eq!(error_text(true, "a\nb"), "<3>a\n<3>b\n");
        assert_eq!(error_text(false, "serve: bad key"), "serve: bad key\n");
    }

    #[test]
    fn every_line_of_a_message_carries_its_priority() {
        assert_eq!(line(log::Level::Warn, "t", "one"), "<4>t: one\n");
        assert_eq!(
            line(log::Level::Warn, "t", "disk a: state dump\nqueue 0\nqueue 1"),
            "<4>t: disk a: state dump\n<4>queue 0\n<4>queue 1\n"
        );
        assert_eq!(line(log::Level::Error, "t", ""), "<3>t: \n");
    }
}
