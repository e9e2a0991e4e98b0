//! Target `config`: the service configuration parser (`scst_accel::config::load::parse`) over
//! arbitrary text, mostly mutated from the seed files.
//!
//! Invariants beyond "no panic":
//! - a refused file has at least one error; every error has a message and a hint;
//! - every error carries a line, except the two that have none: a file without any `[[disk]]`
//!   (a whole-file problem) and a TOML syntax error the TOML parser gave no position;
//! - every error's line is a line of the text (1..=lines, or one past the last line for an
//!   error at the end of the file);
//! - errors are in line order, errors without a line last;
//! - the result does not depend on the origin name.

use crate::check;
use scst_accel::config::load::parse;

/// Run one input (bytes that are not UTF-8 are read lossily, as a file the service reads would
/// be refused before parsing anyway).
pub fn target(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let result = parse(&text, "fuzz.toml");
    let Err(errors) = result else {
        return;
    };
    check!(!errors.errors.is_empty(), "refused without an error:\n{text}");
    let lines = text.lines().count().max(1) + 1;
    let mut last = Some(0usize);
    for e in &errors.errors {
        check!(!e.message.is_empty() && !e.hint.is_empty(), "{e:?}\n{text}");
        check!(
            e.line.is_some()
                || e.message.starts_with("no [[disk]]")
                || e.message.starts_with("TOML syntax error"),
            "an error without a line: {e:?}\n{text}"
        );
        if let Some(line) = e.line {
            check!(
                (1..=lines).contains(&line),
                "line {line} of {lines}: {e:?}\n{text}"
            );
            check!(
                last.is_some_and(|l| l <= line),
                "errors out of line order: {:#?}",
                errors.errors
            );
        }
        last = match (last, e.line) {
            (Some(_), Some(line)) => Some(line),
            _ => None,
        };
    }
    let again = parse(&text, "other.toml").err().map(|e| e.errors);
    check!(
        again.as_ref() == Some(&errors.errors),
        "origin changed the errors:\n{text}"
    );
}
