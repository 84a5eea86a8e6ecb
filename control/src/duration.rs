//! Durations on the command line: a whole number and a unit, `90s`, `1m`, `24h`, `365d`.

use std::time::Duration;

use weft_link::flags::{DurationUnits, parse_duration_in};

/// The control plane's units: whole seconds up to days.
const UNITS: DurationUnits = DurationUnits {
    units: &[
        ("s", 1000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ],
    examples: "90s, 1m, 24h or 365d",
};

/// Parses `<n>s`, `<n>m`, `<n>h` or `<n>d`. The message says what is wrong with the input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_in(s, &UNITS)
}

/// The largest unit that divides `d` exactly, so that a limit reads as it was written.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => "0s".to_string(),
        s if s % (24 * 3600) == 0 => format!("{}d", s / (24 * 3600)),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_says_what_is_wrong() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(
            parse_duration("365d"),
            Ok(Duration::from_secs(365 * 86_400))
        );
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").unwrap_err().contains("whole number"));
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }
}
