//! The UTC calendar: budget periods (days, weeks from Monday, months) and their bounds, and
//! RFC 3339 times, without a date-time crate.

/// Seconds in a day.
const DAY: i64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    /// `day`, `week` or `month`, as written in the config.
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "day" => Some(Period::Day),
            "week" => Some(Period::Week),
            "month" => Some(Period::Month),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// The period holding `now` (Unix seconds): its start (inclusive) and end (exclusive).
    pub fn bounds(self, now: i64) -> (i64, i64) {
        let days = now.div_euclid(DAY);
        let (start, end) = match self {
            Period::Day => (days, days + 1),
            Period::Week => {
                // 1970-01-01 was a Thursday: Monday is 0 here.
                let weekday = (days + 3).rem_euclid(7);
                (days - weekday, days - weekday + 7)
            }
            Period::Month => {
                let (y, m, _) = civil_from_days(days);
                let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (days_from_civil(y, m, 1), days_from_civil(next.0, next.1, 1))
            }
        };
        (start * DAY, end * DAY)
    }

    /// Whole seconds from `now` to the end of its period (at least 1).
    pub fn seconds_left(self, now: i64) -> u64 {
        let (_, end) = self.bounds(now);
        u64::try_from(end - now).unwrap_or(1).max(1)
    }
}

/// RFC 3339 (UTC, whole seconds) of Unix seconds.
pub fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(DAY), secs.rem_euclid(DAY));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of a UTC date and time.
    fn at(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> i64 {
        days_from_civil(y, m, d) * DAY + hh * 3600 + mm * 60 + ss
    }

    #[test]
    fn civil_round_trips() {
        for days in [-1000, 0, 59, 10_000, 20_000, 20_513] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(
            days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 1),
            29
        );
    }

    #[test]
    fn a_day_runs_midnight_to_midnight_utc() {
        let now = at(2026, 12, 2, 5, 21, 57);
        assert_eq!(
            Period::Day.bounds(now),
            (at(2026, 12, 2, 0, 0, 0), at(2026, 12, 3, 0, 0, 0))
        );
        assert_eq!(Period::Day.seconds_left(at(2026, 12, 2, 23, 59, 59)), 1);
        // The first second of a day belongs to it, not to the day before.
        let midnight = at(2026, 12, 3, 0, 0, 0);
        assert_eq!(Period::Day.bounds(midnight).0, midnight);
        assert_eq!(Period::Day.seconds_left(midnight), 86_400);
    }

    #[test]
    fn a_week_starts_on_monday() {
        // 2026-12-02 is a Wednesday; its week runs Mon 2026-11-30 to Mon 2026-12-07.
        let wed = at(2026, 12, 2, 12, 0, 0);
        assert_eq!(
            Period::Week.bounds(wed),
            (at(2026, 11, 30, 0, 0, 0), at(2026, 12, 7, 0, 0, 0))
        );
        // Sunday night is still the same week; Monday 00:00 starts the next.
        let sunday = at(2026, 12, 6, 23, 59, 59);
        assert_eq!(Period::Week.bounds(sunday).1, at(2026, 12, 7, 0, 0, 0));
        let monday = at(2026, 12, 7, 0, 0, 0);
        assert_eq!(Period::Week.bounds(monday).0, monday);
        // A week across a year's end.
        assert_eq!(
            Period::Week.bounds(at(2027, 1, 1, 8, 0, 0)),
            (at(2026, 12, 28, 0, 0, 0), at(2027, 1, 4, 0, 0, 0))
        );
        // Before 1970 too (Thursday 1969-12-25 → Monday 1969-12-22).
        assert_eq!(
            Period::Week.bounds(at(1969, 12, 25, 1, 0, 0)).0,
            at(1969, 12, 22, 0, 0, 0)
        );
    }

    #[test]
    fn a_month_ends_at_the_next_months_first_day() {
        assert_eq!(
            Period::Month.bounds(at(2026, 12, 2, 5, 0, 0)),
            (at(2026, 12, 1, 0, 0, 0), at(2027, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            Period::Month.bounds(at(2027, 4, 30, 23, 0, 0)),
            (at(2027, 4, 1, 0, 0, 0), at(2027, 5, 1, 0, 0, 0))
        );
        assert_eq!(Period::Month.seconds_left(at(2026, 12, 31, 23, 59, 0)), 60);
    }

    #[test]
    fn february_knows_leap_years() {
        let feb = |y| {
            let (s, e) = Period::Month.bounds(at(y, 2, 10, 0, 0, 0));
            (e - s) / DAY
        };
        assert_eq!(feb(2028), 29);
        assert_eq!(feb(2027), 28);
        assert_eq!(feb(2000), 29);
        assert_eq!(feb(2100), 28);
        // 29 February belongs to February; 1 March starts March.
        assert_eq!(
            Period::Month.bounds(at(2028, 2, 29, 23, 59, 59)).1,
            at(2028, 3, 1, 0, 0, 0)
        );
        assert_eq!(
            Period::Day.bounds(at(2028, 2, 29, 12, 0, 0)).1,
            at(2028, 3, 1, 0, 0, 0)
        );
    }

    #[test]
    fn names_parse_back() {
        for p in [Period::Day, Period::Week, Period::Month] {
            assert_eq!(Period::parse(p.name()), Some(p));
        }
        assert_eq!(Period::parse("year"), None);
        assert_eq!(Period::parse("Month"), None);
    }
}
