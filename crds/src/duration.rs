//! Go/Kubernetes-style duration strings (`500ms`, `5s`, `2m`, `1h30m`), the format of every
//! duration field of the Activity API. The same grammar is enforced by the CRD schema
//! ([`DURATION_PATTERN`]) and compared with CEL's `duration()` by the chart's spec policy.

use std::time::Duration;

/// Regular expression the CRD schema applies to duration fields: one or more `<number><unit>`
/// groups (units `ns`, `us`, `ms`, `s`, `m`, `h`), or a bare `0`. No sign: durations are never negative.
pub const DURATION_PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+)$";

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. 500ms, 5s, 2m, 1h30m)")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses a Go-style duration. Accepts exactly what [`DURATION_PATTERN`] accepts.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError { input: input.to_string(), reason };
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    if input.is_empty() {
        return Err(err("empty"));
    }
    let mut total: u128 = 0; // nanoseconds
    let mut rest = input;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| err("missing unit"))?;
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        let (int_part, frac_part) = match num.split_once('.') {
            Some((i, f)) if !f.is_empty() && !f.contains('.') => (i, f),
            Some(_) => return Err(err("malformed number")),
            None => (num, ""),
        };
        if int_part.is_empty() {
            return Err(err("malformed number"));
        }
        let int: u128 = int_part.parse().map_err(|_| err("number too large"))?;
        let mut value = int.checked_mul(unit_ns).ok_or_else(|| err("number too large"))?;
        // Fractions: keep at most 9 digits, enough for nanosecond precision of every unit.
        let mut scale = unit_ns;
        for digit in frac_part.chars().take(9) {
            scale /= 10;
            let part = u128::from(digit.to_digit(10).unwrap_or(0)) * scale;
            value = value.checked_add(part).ok_or_else(|| err("number too large"))?;
        }
        total = total.checked_add(value).ok_or_else(|| err("number too large"))?;
        rest = next;
    }
    // Go's limit: about 290 years.
    let nanos =
        u64::try_from(total).ok().filter(|n| *n <= i64::MAX as u64).ok_or_else(|| err("longer than 290 years"))?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats a duration the way Go does (`1h30m0s`, `1.5s`, `250ms`, `0s`), for messages.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, div) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("us", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", trim_fraction(nanos, div));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let secs = trim_fraction(nanos % 60_000_000_000, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

fn trim_fraction(value: u128, div: u128) -> String {
    let int = value / div;
    let frac = value % div;
    if frac == 0 {
        return int.to_string();
    }
    let width = div.to_string().len() - 1;
    let digits = format!("{frac:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        let cases = [
            ("0", 0),
            ("0s", 0),
            ("500ms", 500_000_000),
            ("5s", 5_000_000_000),
            ("2m", 120_000_000_000),
            ("1h30m", 5_400_000_000_000),
            ("1.5s", 1_500_000_000),
            ("1m0.25s", 60_250_000_000),
            ("10us", 10_000),
            ("7ns", 7),
        ];
        for (input, nanos) in cases {
            assert_eq!(parse_duration(input), Ok(Duration::from_nanos(nanos)), "{input}");
        }
    }

    #[test]
    fn refuses_malformed_durations() {
        let overflow = "340282366920938463463374607431768211.9us"; // u128::MAX / 1000, plus a fraction
        for input in
            ["", "5", "s", "-5s", "5 s", "5sec", "1.s", ".5s", "1..5s", "5d", "1.2.3s", "99999999999h", overflow]
        {
            let e = parse_duration(input).expect_err(input);
            assert_eq!(e.input, input);
            assert!(e.to_string().contains("invalid duration"), "{e}");
        }
    }

    /// The parser is total: any mix of its grammar's characters is parsed or refused, never a panic
    /// (an Activity that crashed the parser crashed every replica of the operator).
    #[test]
    fn never_panics_on_any_mix_of_its_characters() {
        let alphabet = b"0123456789.nsuhm9";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 48) as usize;
            let text: String =
                (0..len).map(|i| alphabet[((state >> (i % 60)) as usize ^ i) % alphabet.len()] as char).collect();
            let _ = parse_duration(&text);
        }
    }

    #[test]
    fn formats_like_go() {
        let cases = [
            (0, "0s"),
            (250_000_000, "250ms"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (5_400_000_000_000, "1h30m0s"),
        ];
        for (nanos, text) in cases {
            assert_eq!(format_duration(Duration::from_nanos(nanos)), text);
        }
    }
}
