//! Human-readable sizes and durations for configuration files.
//!
//! `"256MiB"`, `"1GB"`, `"4096"` and plain numbers are byte sizes; `"1s"`, `"500ms"` and
//! `"2m 30s"` are durations. Both serialize back to the same human form.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes, written as `"64MiB"` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("`{s}` is not a size: write a number and a unit, like 256MiB"))?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" | "ki" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mib" | "mi" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" | "gi" => 1 << 30,
            "t" | "tb" => 1000 * 1000 * 1000 * 1000,
            "tib" | "ti" => 1 << 40,
            other => {
                return Err(format!(
                    "`{s}` has an unknown size unit `{other}`: use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
                ));
            }
        };
        let bytes = number * factor as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("`{s}` is out of range"));
        }
        Ok(Self(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (unit, size) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        for (unit, size) in UNITS {
            if self.0 >= size {
                return write!(f, "{:.1}{unit}", self.0 as f64 / size as f64);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Self(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration, written as `"1s"`, `"250ms"` or `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Self(Duration::from_secs(n))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Self).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration ({e}): write it like 1s, 500ms or 2m"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!("256MiB".parse::<ByteSize>(), Ok(ByteSize(256 << 20)));
        assert_eq!("1 GB".parse::<ByteSize>(), Ok(ByteSize(1_000_000_000)));
        assert_eq!("1.5KiB".parse::<ByteSize>(), Ok(ByteSize(1536)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert!(
            "12 parsecs"
                .parse::<ByteSize>()
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!("MiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn sizes_round_trip_through_json() {
        let size: ByteSize = serde_json::from_str("\"64MiB\"").unwrap();
        assert_eq!(serde_json::to_string(&size).unwrap(), "\"64MiB\"");
        let size: ByteSize = serde_json::from_str("1000").unwrap();
        assert_eq!(size.to_string(), "1000B");
        assert_eq!(ByteSize(1536).to_string(), "1.5KiB");
    }

    #[test]
    fn parses_durations() {
        let d: HumanDuration = serde_json::from_str("\"1m 30s\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(90));
        let err = serde_json::from_str::<HumanDuration>("\"soon\"").unwrap_err();
        assert!(err.to_string().contains("is not a duration"), "{err}");
    }
}
