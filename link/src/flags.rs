//! Command-line values shared by the mesh binaries: durations with a unit (`500ms`, `5s`,
//! `2m`, `24h`) and counts that must be at least one. The messages say what is wrong with
//! the input, for clap to show next to the flag.

use std::time::Duration;

/// The units a duration flag accepts and the examples its messages give.
#[derive(Debug, Clone, Copy)]
pub struct DurationUnits {
    /// Each unit's suffix and length in milliseconds, in the order the messages list them.
    pub units: &'static [(&'static str, u64)],
    /// Shown when the unit is missing, e.g. "500ms, 5s or 2m".
    pub examples: &'static str,
}

/// The agent's and the gateway's flags: `ms`, `s`, `m`, `h`.
pub const MESH_UNITS: DurationUnits = DurationUnits {
    units: &[("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)],
    examples: "500ms, 5s or 2m",
};

/// Parses `500ms`, `5s`, `2m`, `24h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_in(s, &MESH_UNITS)
}

/// Parses a whole number followed by one of `units`.
pub fn parse_duration_in(s: &str, units: &DurationUnits) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit; write e.g. {}", units.examples))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a whole number"))?;
    let Some(&(_, millis)) = units.units.iter().find(|(name, _)| *name == unit) else {
        return Err(format!(
            "{s:?}: unknown unit {unit:?}; use {}",
            one_of(units.units.iter().map(|(name, _)| *name))
        ));
    };
    n.checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// "a, b or c".
fn one_of<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    let last = names.len().saturating_sub(1);
    let mut out = String::new();
    for (i, name) in names.enumerate() {
        if i > 0 {
            out.push_str(if i == last { " or " } else { ", " });
        }
        out.push_str(name);
    }
    out
}

/// Parses a count that must be at least 1 (0 would refuse everything).
pub fn parse_at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 24h "), Ok(Duration::from_secs(86_400)));
        assert_eq!(
            parse_duration("5").unwrap_err(),
            "\"5\" has no unit; write e.g. 500ms, 5s or 2m"
        );
        assert_eq!(
            parse_duration("5d").unwrap_err(),
            "\"5d\": unknown unit \"d\"; use ms, s, m or h"
        );
        assert!(parse_duration("ms").unwrap_err().contains("whole number"));
        assert!(
            parse_duration("99999999999999999999h")
                .unwrap_err()
                .contains("whole number")
        );
        assert!(
            parse_duration("9999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn counts_start_at_one() {
        assert_eq!(parse_at_least_one("3"), Ok(3));
        assert_eq!(parse_at_least_one("0").unwrap_err(), "must be at least 1");
        assert!(
            parse_at_least_one("x")
                .unwrap_err()
                .contains("whole number")
        );
    }
}
