//! When a schedule is due: a cron expression of 5 fields (minute precision) or 6 (seconds
//! first) evaluated in an IANA time zone (the `croner` crate on `jiff`, whose zone database
//! is bundled, so a container without one works), a fixed interval counted from the
//! schedule's creation, or one time.
//!
//! Daylight saving time, as cron implementations that know zones do it: a local time that a
//! spring-forward gap skips fires at the gap's end, and one that a fall-back fold repeats
//! fires once, at its first occurrence (croner's resolution).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::NexusError;

/// Shortest interval of an `Every` schedule.
pub const MIN_EVERY_MS: u64 = 1000;
/// Longest expression or zone name.
const MAX_TEXT: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Spec {
    Cron { expr: String, zone: String },
    Every { every_ms: u64 },
    At { at_ms: i64 },
}

impl Spec {
    pub fn approx_size(&self) -> usize {
        match self {
            Spec::Cron { expr, zone } => expr.len() + zone.len() + 8,
            Spec::Every { .. } | Spec::At { .. } => 16,
        }
    }

    /// For people: `cron "0 9 * * 1-5" Europe/Paris`, `every 30s`, `at 2026-12-24T18:00:00Z`.
    pub fn describe(&self) -> String {
        match self {
            Spec::Cron { expr, zone } => format!("cron {expr:?} {zone}"),
            Spec::Every { every_ms } => {
                format!(
                    "every {:#}",
                    jiff::SignedDuration::from_millis(*every_ms as i64)
                )
            }
            Spec::At { at_ms } => match jiff::Timestamp::from_millisecond(*at_ms) {
                Ok(t) => format!("at {t}"),
                Err(_) => format!("at {at_ms} ms"),
            },
        }
    }

    /// Checks the spec, naming the field at fault: a cron expression that parses, a zone the
    /// database knows, an interval of at least a second.
    pub fn validate(&self) -> Result<(), NexusError> {
        match self {
            Spec::Cron { expr, zone } => {
                cron(expr)?;
                time_zone(zone)?;
            }
            Spec::Every { every_ms } => {
                if *every_ms < MIN_EVERY_MS {
                    return Err(NexusError::invalid(
                        "every",
                        format!("is {every_ms} ms; the shortest interval is 1 s"),
                    ));
                }
            }
            Spec::At { at_ms } => {
                jiff::Timestamp::from_millisecond(*at_ms)
                    .map_err(|e| NexusError::invalid("at", format!("is not a time: {e}")))?;
            }
        }
        Ok(())
    }

    /// The first due time strictly after `after_ms` (None: never again), for a schedule made
    /// at `anchor_ms` (where an interval counts from).
    pub fn next_after(&self, anchor_ms: i64, after_ms: i64) -> Result<Option<i64>, NexusError> {
        match self {
            Spec::Every { every_ms } => {
                let every = *every_ms as i64;
                if after_ms < anchor_ms {
                    return Ok(Some(anchor_ms));
                }
                let n = (after_ms - anchor_ms) / every + 1;
                Ok(Some(anchor_ms + n * every))
            }
            Spec::At { at_ms } => Ok((*at_ms > after_ms).then_some(*at_ms)),
            Spec::Cron { expr, zone } => {
                let cron = cron(expr)?;
                let tz = time_zone(zone)?;
                let start = jiff::Timestamp::from_millisecond(after_ms)
                    .map_err(|e| NexusError::invalid("after", e.to_string()))?
                    .to_zoned(tz);
                match cron.find_next_occurrence(&start, false) {
                    Ok(next) => Ok(Some(next.timestamp().as_millisecond())),
                    // No match before the end of time that jiff knows (year 9999).
                    Err(_) => Ok(None),
                }
            }
        }
    }

    /// The due times in `(after_ms, through_ms]`, at most `limit` (and whether there were
    /// more), for counting what downtime skipped and for previews.
    pub fn due_between(
        &self,
        anchor_ms: i64,
        after_ms: i64,
        through_ms: i64,
        limit: usize,
    ) -> Result<(Vec<i64>, bool), NexusError> {
        let mut out = Vec::new();
        let mut at = after_ms;
        while let Some(next) = self.next_after(anchor_ms, at)? {
            if next > through_ms {
                return Ok((out, false));
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(next);
            at = next;
        }
        Ok((out, false))
    }

    /// How many due times fall in `(after_ms, through_ms]`: by arithmetic for an interval,
    /// by walking a cron expression (at most `cap`; more count as `cap`).
    pub fn count_between(
        &self,
        anchor_ms: i64,
        after_ms: i64,
        through_ms: i64,
        cap: u64,
    ) -> Result<u64, NexusError> {
        if through_ms <= after_ms {
            return Ok(0);
        }
        match self {
            Spec::Every { every_ms } => {
                let every = *every_ms as i64;
                let upto = |t: i64| {
                    if t < anchor_ms {
                        0
                    } else {
                        (t - anchor_ms) / every + 1
                    }
                };
                Ok((upto(through_ms) - upto(after_ms)).max(0) as u64)
            }
            _ => {
                let (times, more) =
                    self.due_between(anchor_ms, after_ms, through_ms, cap as usize)?;
                Ok(if more { cap } else { times.len() as u64 })
            }
        }
    }
}

fn cron(expr: &str) -> Result<croner::Cron, NexusError> {
    if expr.len() > MAX_TEXT {
        return Err(NexusError::invalid(
            "cron",
            format!("is {} bytes; at most {MAX_TEXT}", expr.len()),
        ));
    }
    let fields = expr.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(NexusError::invalid(
            "cron",
            format!(
                "{expr:?} has {fields} fields; a cron expression has 5 (minute hour day month weekday) or 6 (seconds first)"
            ),
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| NexusError::invalid("cron", format!("{expr:?} is not a cron expression: {e}")))
}

/// An IANA time zone (`Europe/Paris`, `UTC`).
pub fn time_zone(zone: &str) -> Result<jiff::tz::TimeZone, NexusError> {
    if zone.len() > MAX_TEXT {
        return Err(NexusError::invalid("zone", "is too long"));
    }
    jiff::tz::TimeZone::get(zone).map_err(|_| {
        NexusError::invalid(
            "zone",
            format!("{zone:?} is not an IANA time zone (Europe/Paris, America/New_York, UTC)"),
        )
    })
}

/// A duration as people write it (`30s`, `5m`, `1h30m`, `2 days`), in milliseconds.
pub fn parse_duration(field: &str, text: &str) -> Result<u64, NexusError> {
    let d = jiff::SignedDuration::from_str(text.trim()).map_err(|e| {
        NexusError::invalid(
            field,
            format!("{text:?} is not a duration (30s, 5m, 1h30m): {e}"),
        )
    })?;
    if d.is_negative() {
        return Err(NexusError::invalid(field, format!("{text:?} is negative")));
    }
    u64::try_from(d.as_millis()).map_err(|_| NexusError::invalid(field, "is too long"))
}

/// A time as RFC 3339 (`2026-12-24T18:00:00Z`, `2026-12-24T18:00:00+01:00`), in ms.
pub fn parse_time(field: &str, text: &str) -> Result<i64, NexusError> {
    jiff::Timestamp::from_str(text.trim())
        .map(|t| t.as_millisecond())
        .map_err(|e| {
            NexusError::invalid(
                field,
                format!("{text:?} is not an RFC 3339 time (2026-12-24T18:00:00Z): {e}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        parse_time("t", text).unwrap()
    }

    #[test]
    fn cron_in_a_zone_with_daylight_saving() {
        let weekdays = Spec::Cron {
            expr: "0 9 * * 1-5".into(),
            zone: "Europe/Paris".into(),
        };
        weekdays.validate().unwrap();
        // Friday 2026-12-04 10:00 Paris -> Monday 2026-12-07 09:00 Paris (08:00Z).
        let next = weekdays
            .next_after(0, ms("2026-12-04T09:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(next, ms("2026-12-07T08:00:00Z"));
        // Six fields: seconds first.
        let every_ten = Spec::Cron {
            expr: "*/10 * * * * *".into(),
            zone: "UTC".into(),
        };
        let (times, more) = every_ten
            .due_between(
                0,
                ms("2026-01-01T00:00:00Z"),
                ms("2026-01-01T00:01:00Z"),
                100,
            )
            .unwrap();
        assert_eq!((times.len(), more), (6, false));
        // 02:30 does not exist in New York on 2026-03-08: it fires at the gap's end, once.
        let gap = Spec::Cron {
            expr: "30 2 * * *".into(),
            zone: "America/New_York".into(),
        };
        let next = gap
            .next_after(0, ms("2026-03-08T05:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(next, ms("2026-03-08T07:00:00Z"), "03:00 EDT");
        // 01:30 happens twice on 2026-11-01: once.
        let fold = Spec::Cron {
            expr: "30 1 * * *".into(),
            zone: "America/New_York".into(),
        };
        let (times, _) = fold
            .due_between(
                0,
                ms("2026-11-01T00:00:00Z"),
                ms("2026-11-02T00:00:00Z"),
                10,
            )
            .unwrap();
        assert_eq!(times, vec![ms("2026-11-01T05:30:00Z")]);
    }

    #[test]
    fn intervals_one_shots_and_counting() {
        let every = Spec::Every { every_ms: 1000 };
        assert_eq!(every.next_after(500, 0).unwrap(), Some(500));
        assert_eq!(every.next_after(500, 500).unwrap(), Some(1500));
        assert_eq!(every.next_after(500, 1499).unwrap(), Some(1500));
        assert_eq!(every.count_between(500, 500, 10_500, 5).unwrap(), 10);
        assert_eq!(every.count_between(500, 0, 499, 5).unwrap(), 0);
        let cron = Spec::Cron {
            expr: "* * * * * *".into(),
            zone: "UTC".into(),
        };
        assert_eq!(cron.count_between(0, 0, 10_000, 100).unwrap(), 10);
        assert_eq!(cron.count_between(0, 0, 10_000, 4).unwrap(), 4, "capped");
        let at = Spec::At { at_ms: 5000 };
        assert_eq!(at.next_after(0, 4999).unwrap(), Some(5000));
        assert_eq!(at.next_after(0, 5000).unwrap(), None);
    }

    #[test]
    fn bad_specs_name_the_field() {
        let field = |s: Spec| match s.validate().unwrap_err() {
            NexusError::InvalidArgument { field, .. } => field,
            other => panic!("{other}"),
        };
        for expr in ["* * * *", "61 * * * *", "* * * * * * * *", "hello"] {
            assert_eq!(
                field(Spec::Cron {
                    expr: expr.into(),
                    zone: "UTC".into()
                }),
                "cron",
                "{expr}"
            );
        }
        assert_eq!(
            field(Spec::Cron {
                expr: "* * * * *".into(),
                zone: "Mars/Olympus".into()
            }),
            "zone"
        );
        assert_eq!(field(Spec::Every { every_ms: 10 }), "every");
        assert_eq!(parse_duration("every", "1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration("every", "30s").unwrap(), 30_000);
        assert!(parse_duration("every", "soon").is_err());
        assert!(parse_time("at", "tomorrow").is_err());
    }
}
