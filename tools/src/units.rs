//! Parsing of human sizes ("4k", "256M", "1G") and durations ("500ms", "5s", "2m").

use std::time::Duration;

/// Parse a byte size with an optional binary suffix k/K, m/M, g/G, t/T (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'b' => 0,
                _ => return Err(format!("unknown size suffix in {text:?}; use k, M, G or T")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 4k, 256M or 1G"))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Parse a duration: a number followed by ms, s, m or h (a bare number means seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 5s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown duration unit in {text:?}; use ms, s, m or h")),
    };
    // `Duration::from_secs_f64` panics past u64::MAX seconds (found by fuzzing the
    // configuration parser: `command_timeout = "77777777777777777777777777777777s"`).
    if seconds < 0.0 {
        return Err(format!("duration {text:?} out of range"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("duration {text:?} out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("4x").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    /// Past `u64::MAX` seconds (or infinite) is an error, not a panic (fuzz target `config`).
    #[test]
    fn huge_durations_are_out_of_range_not_a_panic() {
        for text in [
            "77777777777777777777777777777777s",
            "18446744073709551616",
            "99999999999999999999h",
        ] {
            let e = parse_duration(text).expect_err(text);
            assert!(e.contains("out of range"), "{text}: {e}");
        }
        assert_eq!(
            parse_duration("9007199254740992"),
            Ok(Duration::from_secs(1 << 53))
        );
    }
}
