//! Intervals as ISO 8601 text (`P1Y2M3DT4H5M6.789S`).
//!
//! Parquet has no lossless interval type (its INTERVAL holds unsigned months, days and
//! milliseconds), so Parquet files carry Arrow `Interval(MonthDayNano)` columns as this text,
//! marked in the field metadata; PostgreSQL reads the same text as `interval` input.

use arrow::datatypes::IntervalMonthDayNano;

/// Field metadata key marking a text column that holds intervals.
pub const INTERVAL_TEXT_KEY: &str = "ferry.interval";

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Formats an interval as ISO 8601 with designators; each part keeps its own sign.
pub fn to_iso8601(v: IntervalMonthDayNano) -> String {
    let mut out = String::from("P");
    let (years, months) = (v.months / 12, v.months % 12);
    for (n, d) in [
        (years as i64, 'Y'),
        (months as i64, 'M'),
        (v.days as i64, 'D'),
    ] {
        if n != 0 {
            out.push_str(&format!("{n}{d}"));
        }
    }
    let nanos = v.nanoseconds;
    let (hours, rest) = (
        nanos / (3600 * NANOS_PER_SEC),
        nanos % (3600 * NANOS_PER_SEC),
    );
    let (minutes, rest) = (rest / (60 * NANOS_PER_SEC), rest % (60 * NANOS_PER_SEC));
    if nanos != 0 {
        out.push('T');
        if hours != 0 {
            out.push_str(&format!("{hours}H"));
        }
        if minutes != 0 {
            out.push_str(&format!("{minutes}M"));
        }
        if rest != 0 {
            let sign = if rest < 0 { "-" } else { "" };
            let (secs, frac) = (rest.abs() / NANOS_PER_SEC, rest.abs() % NANOS_PER_SEC);
            let frac = format!("{frac:09}");
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                out.push_str(&format!("{sign}{secs}S"));
            } else {
                out.push_str(&format!("{sign}{secs}.{frac}S"));
            }
        }
    }
    if out == "P" {
        out.push_str("T0S");
    }
    out
}

/// Parses ISO 8601 with designators (`P1Y2M3DT4H5M6.5S`, parts may be signed); None if the
/// text is not in that form.
pub fn parse_iso8601(text: &str) -> Option<IntervalMonthDayNano> {
    let rest = text.trim().strip_prefix('P')?;
    let (mut months, mut days, mut nanos) = (0i64, 0i64, 0i64);
    let mut time = false;
    let mut start = 0;
    let mut any = false;
    for (i, c) in rest.char_indices() {
        if c == 'T' {
            if time || i != start {
                return None;
            }
            time = true;
            start = i + 1;
            continue;
        }
        if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' {
            continue;
        }
        let number = &rest[start..i];
        start = i + c.len_utf8();
        any = true;
        match (time, c) {
            (false, 'Y') => months += number.parse::<i64>().ok()?.checked_mul(12)?,
            (false, 'M') => months += number.parse::<i64>().ok()?,
            (false, 'W') => days += number.parse::<i64>().ok()?.checked_mul(7)?,
            (false, 'D') => days += number.parse::<i64>().ok()?,
            (true, 'H') => {
                nanos += number
                    .parse::<i64>()
                    .ok()?
                    .checked_mul(3600 * NANOS_PER_SEC)?
            }
            (true, 'M') => {
                nanos += number
                    .parse::<i64>()
                    .ok()?
                    .checked_mul(60 * NANOS_PER_SEC)?
            }
            (true, 'S') => nanos += parse_seconds(number)?,
            _ => return None,
        }
    }
    if !any || start != rest.len() {
        return None;
    }
    Some(IntervalMonthDayNano::new(
        i32::try_from(months).ok()?,
        i32::try_from(days).ok()?,
        nanos,
    ))
}

/// `-6.789` seconds as nanoseconds.
fn parse_seconds(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: i64 = format!("{frac:0<9}").parse().ok()?;
    let n = whole.checked_mul(NANOS_PER_SEC)?.checked_add(frac)?;
    Some(if negative { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_round_trip_through_iso_text() {
        let cases = [
            (
                IntervalMonthDayNano::new(14, 3, 14_706_789_000_000),
                "P1Y2M3DT4H5M6.789S",
            ),
            (IntervalMonthDayNano::new(0, -1, 0), "P-1D"),
            (
                IntervalMonthDayNano::new(-13, 0, -1_500_000_000),
                "P-1Y-1MT-1.5S",
            ),
            (IntervalMonthDayNano::new(0, 0, 0), "PT0S"),
            (IntervalMonthDayNano::new(0, 0, 1_000), "PT0.000001S"),
        ];
        for (value, text) in cases {
            assert_eq!(to_iso8601(value), text);
            assert_eq!(parse_iso8601(text), Some(value), "{text}");
        }
        assert_eq!(
            parse_iso8601("P2W"),
            Some(IntervalMonthDayNano::new(0, 14, 0))
        );
        for bad in ["", "P", "1D", "PT", "P1X", "P1.5D", "PT1.0000000001S"] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }
}
