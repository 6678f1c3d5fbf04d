//! Timestamps as people type them on a command line, and as the CLI prints
//! them. Readings are stamped in milliseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The latest timestamp the protocol accepts: 9999-12-31T23:59:59.999Z.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// Longest accepted input; anything longer is not a time.
const MAX_TIME_INPUT_BYTES: usize = 64;

const MS_PER_MINUTE: i64 = 60_000;
/// RFC 3339 allows offsets up to ±23:59.
const MAX_OFFSET_HOURS: i64 = 23;
const MAX_OFFSET_MINUTES: i64 = 59;

/// Why a time could not be parsed; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid time {input:?}: {reason}; expected RFC 3339 (2026-11-21T10:00:00Z), now, now-<duration> (now-1h) or epoch milliseconds")]
pub struct TimeError {
    pub input: String,
    pub reason: String,
}

/// Parses a point in time to epoch milliseconds. Accepts:
/// - RFC 3339 with `Z` or an offset: `2026-11-21T10:00:00.123Z`,
///   `2026-11-21T12:00:00+02:00`;
/// - `now`, `now-<duration>`, `now+<duration>` with a humantime duration
///   (`now-1h`, `now-15m30s`, `now-2days`);
/// - an integer of epoch milliseconds.
///
/// `now_ms` is the caller's clock, so tests are deterministic. The result is
/// within 0..=[`MAX_TIMESTAMP_MS`], the range the protocol accepts.
pub fn parse_time(input: &str, now_ms: i64) -> Result<i64, TimeError> {
    let fail = |reason: &str| TimeError {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(fail("empty"));
    }
    if text.len() > MAX_TIME_INPUT_BYTES || !text.is_ascii() {
        return Err(fail("not a time"));
    }
    let ms = if text.eq_ignore_ascii_case("now") {
        now_ms
    } else if let Some(rest) = strip_prefix_ignore_case(text, "now-") {
        now_ms
            .checked_sub(parse_duration_ms(rest).map_err(|reason| fail(&reason))?)
            .ok_or_else(|| fail("out of range"))?
    } else if let Some(rest) = strip_prefix_ignore_case(text, "now+") {
        now_ms
            .checked_add(parse_duration_ms(rest).map_err(|reason| fail(&reason))?)
            .ok_or_else(|| fail("out of range"))?
    } else if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<i64>().map_err(|_| fail("out of range"))?
    } else {
        parse_rfc3339_ms(text).map_err(|reason| fail(&reason))?
    };
    if !(0..=MAX_TIMESTAMP_MS).contains(&ms) {
        return Err(fail("outside 1970-01-01 to 9999-12-31"));
    }
    Ok(ms)
}

/// The current wall-clock time in epoch milliseconds (0 if the clock is set
/// before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2026-11-21T10:00:00.123Z`, or the bare number for a value outside the
/// protocol's range (which a buggy server could still send).
pub fn format_timestamp_ms(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(unsigned) if ms <= MAX_TIMESTAMP_MS => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unsigned))
                .to_string()
        }
        _ => ms.to_string(),
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|error| format!("bad duration {text:?}: {error}"))?;
    i64::try_from(duration.as_millis()).map_err(|_| "duration out of range".to_string())
}

/// RFC 3339 requires a zone designator; a time without one is rejected rather
/// than guessed to be UTC or local time.
fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let (local, offset_ms) = split_zone(text)?;
    let bytes = local.as_bytes();
    let well_formed = bytes.len() >= 19
        && matches!(bytes[10], b'T' | b't' | b' ')
        && bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b"-:.Tt ".contains(b))
        && !local.ends_with('.');
    if !well_formed {
        return Err("not an RFC 3339 date-time".to_string());
    }
    let mut normalized = local.to_string();
    normalized.replace_range(10..11, "T");
    let time = humantime::parse_rfc3339_weak(&normalized).map_err(|error| error.to_string())?;
    let local_ms = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "before 1970".to_string())
        .and_then(|d| i64::try_from(d.as_millis()).map_err(|_| "out of range".to_string()))?;
    local_ms
        .checked_sub(offset_ms)
        .ok_or_else(|| "out of range".to_string())
}

/// Splits `...Z` or `...±HH:MM` into the local date-time and the offset in ms.
fn split_zone(text: &str) -> Result<(&str, i64), String> {
    if let Some(local) = text.strip_suffix(['Z', 'z']) {
        return Ok((local, 0));
    }
    let missing = || "missing time zone: append Z for UTC or an offset like +02:00".to_string();
    let split_at = text.len().checked_sub(6).ok_or_else(missing)?;
    let (local, zone) = text.split_at(split_at);
    let zone = zone.as_bytes();
    let sign = match zone[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return Err(missing()),
    };
    if zone[3] != b':' {
        return Err(missing());
    }
    let two_digits = |a: u8, b: u8| -> Option<i64> {
        (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from((a - b'0') * 10 + (b - b'0')))
    };
    let hours = two_digits(zone[1], zone[2]).ok_or_else(missing)?;
    let minutes = two_digits(zone[4], zone[5]).ok_or_else(missing)?;
    if hours > MAX_OFFSET_HOURS || minutes > MAX_OFFSET_MINUTES {
        return Err("time zone offset out of range".to_string());
    }
    Ok((local, sign * (hours * 60 + minutes) * MS_PER_MINUTE))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-21T10:00:00.123Z
    const NOW_MS: i64 = 1_795_255_200_123;

    fn check(input: &str, expected: Result<i64, ()>) {
        let actual = parse_time(input, NOW_MS).map_err(|_| ());
        assert_eq!(actual, expected, "input {input:?}");
    }

    #[test]
    fn rfc3339_with_zone() {
        check("2026-11-21T00:00:00Z", Ok(1_795_219_200_000));
        check("2026-11-21t00:00:00z", Ok(1_795_219_200_000));
        check("2026-11-21 00:00:00Z", Ok(1_795_219_200_000));
        check("2026-11-21T10:00:00.123Z", Ok(NOW_MS));
        check("2026-11-21T10:00:00.123456789Z", Ok(NOW_MS));
        check("2026-11-21T12:00:00.123+02:00", Ok(NOW_MS));
        check("2026-11-21T05:30:00.123-04:30", Ok(NOW_MS));
        check("2026-11-21T10:00:00.123+00:00", Ok(NOW_MS));
        check("1970-01-01T00:00:00Z", Ok(0));
        check("9999-12-31T23:59:59.999Z", Ok(MAX_TIMESTAMP_MS));
    }

    #[test]
    fn now_and_relative() {
        check("now", Ok(NOW_MS));
        check(" NOW ", Ok(NOW_MS));
        check("now-1h", Ok(NOW_MS - 3_600_000));
        check("now-15m30s", Ok(NOW_MS - 930_000));
        check("now-2days", Ok(NOW_MS - 2 * 86_400_000));
        check("now+500ms", Ok(NOW_MS + 500));
        check("now-", Err(()));
        check("now-1parsec", Err(()));
        check("now-1000000000000years", Err(()));
    }

    #[test]
    fn epoch_milliseconds() {
        check("0", Ok(0));
        check("1795255200123", Ok(NOW_MS));
        check("253402300799999", Ok(MAX_TIMESTAMP_MS));
        check("253402300800000", Err(()));
        check("99999999999999999999999", Err(()));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        for input in [
            "",
            " ",
            "yesterday",
            "2026-11-21",
            "2026-11-21T00:00:00",
            "2026-11-21T00:00:00+2:00",
            "2026-11-21T00:00:00+24:00",
            "2026-11-21T00:00:00+02:60",
            "2026-11-21T25:00:00Z",
            "2026-13-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:30:00+01:00",
            "2026-11-21T00:00:00.Z",
            "2026-11-21X00:00:00Z",
            "2026-11-21T00:00:00ZZ",
            "-1",
            "+5",
            "1.5",
            "ñow",
            "2026-11-21T00:00:00Ω",
            "Z",
            "+00:00",
        ] {
            check(input, Err(()));
        }
    }

    #[test]
    fn errors_say_what_is_accepted() {
        let error = parse_time("2026-11-21T00:00:00", NOW_MS).expect_err("no zone");
        let message = error.to_string();
        assert!(message.contains("missing time zone"), "{message}");
        assert!(message.contains("now-<duration>"), "{message}");
    }

    #[test]
    fn formatting_round_trips_and_never_panics() {
        assert_eq!(format_timestamp_ms(NOW_MS), "2026-11-21T10:00:00.123Z");
        assert_eq!(format_timestamp_ms(0), "1970-01-01T00:00:00.000Z");
        for ms in [0, 1, NOW_MS, MAX_TIMESTAMP_MS] {
            assert_eq!(parse_time(&format_timestamp_ms(ms), NOW_MS), Ok(ms));
        }
        assert_eq!(format_timestamp_ms(-1), "-1");
        assert_eq!(format_timestamp_ms(i64::MAX), i64::MAX.to_string());
        assert_eq!(
            format_timestamp_ms(MAX_TIMESTAMP_MS + 1),
            (MAX_TIMESTAMP_MS + 1).to_string()
        );
    }
}
