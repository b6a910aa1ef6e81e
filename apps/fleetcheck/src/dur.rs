//! Durations as written in config and rules files and on the command line:
//! `"250ms"`, `"15s"`, `"5m"`, `"2h"`, `"1d"`, combinations like `"1m30s"`,
//! or a bare number of seconds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration in seconds.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Dur(f64);

impl Dur {
    /// `secs` seconds (negative or NaN is taken as 0).
    pub fn from_secs(secs: f64) -> Self {
        Dur(if secs.is_finite() && secs > 0.0 {
            secs
        } else {
            0.0
        })
    }

    /// Seconds.
    pub fn secs(self) -> f64 {
        self.0
    }

    /// As a [`Duration`].
    pub fn duration(self) -> Duration {
        Duration::from_secs_f64(self.0)
    }
}

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {text:?} (expected e.g. \"250ms\", \"15s\", \"5m\", \"1h30m\" or a number of seconds)"
)]
pub struct DurError {
    /// The text given.
    pub text: String,
}

impl FromStr for Dur {
    type Err = DurError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurError {
            text: s.to_string(),
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(err());
        }
        if let Ok(v) = t.parse::<f64>() {
            return (v.is_finite() && v >= 0.0)
                .then_some(Dur(v))
                .ok_or_else(err);
        }
        let mut total = 0.0;
        let mut rest = t;
        while !rest.is_empty() {
            let n = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            let v: f64 = rest[..n].parse().map_err(|_| err())?;
            rest = &rest[n..];
            let u = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let mul = match &rest[..u] {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                "d" => 86_400.0,
                _ => return Err(err()),
            };
            total += v * mul;
            rest = &rest[u..];
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0.0 && self.0 < 1.0 {
            write!(f, "{}ms", self.0 * 1000.0)
        } else {
            write!(f, "{}s", self.0)
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            // Binary formats (postcard, to the workers): plain seconds.
            s.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        if !d.is_human_readable() {
            return Ok(Dur::from_secs(f64::deserialize(d)?));
        }
        match Raw::deserialize(d)? {
            Raw::Num(v) if v.is_finite() && v >= 0.0 => Ok(Dur(v)),
            Raw::Num(v) => Err(serde::de::Error::custom(format!(
                "invalid duration {v} (must be >= 0)"
            ))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_combinations_and_numbers() {
        let p = |s: &str| s.parse::<Dur>().map(Dur::secs);
        assert_eq!(p("15s"), Ok(15.0));
        assert_eq!(p("250ms"), Ok(0.25));
        assert_eq!(p("5m"), Ok(300.0));
        assert_eq!(p("1h30m"), Ok(5400.0));
        assert_eq!(p("2d"), Ok(172_800.0));
        assert_eq!(p("1.5"), Ok(1.5));
        for bad in ["", "x", "5x", "-1", "m5", "1h m"] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        let d: Dur = "1m".parse().unwrap();
        assert_eq!(d.to_string().parse::<Dur>().unwrap(), d);
        let d: Dur = "250ms".parse().unwrap();
        assert_eq!(d.to_string().parse::<Dur>().unwrap(), d);
        // Binary (postcard, as sent to the workers) as well as text.
        let bin = postcard::to_stdvec(&d).unwrap();
        assert_eq!(postcard::from_bytes::<Dur>(&bin).unwrap(), d);
    }
}
