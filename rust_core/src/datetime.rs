//! COSEM date, time and date-time (Blue Book 4.1.6.1, "Date and time formats").
//!
//! ```text
//! date-time (12 bytes):
//!   year(2) month day-of-month day-of-week | hour minute second hundredths | deviation(2) clock-status
//!   0xFFFF / 0xFF = not specified; month 0xFD/0xFE = DST end/begin; day 0xFE/0xFD = last/second-last;
//!   deviation in minutes, 0x8000 = not specified; clock status bits: 0 invalid, 1 doubtful,
//!   2 different clock base, 3 invalid clock status, 7 daylight saving active.
//! ```
//! The standard's deviation is "local time to UTC": UTC = local + deviation, so
//! Tashkent (UTC+5) is -300. Many meters send the opposite sign; that quirk lives in the
//! meter-model profile as [`DeviationSign::Inverted`], not in code branches.
//!
//! Conversions use integer civil-calendar arithmetic, never libc local time (DESIGN.md
//! section 8: per-value local-time calls made a peer 3-5x slower).

use std::fmt::Write as _;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// "Not specified" markers.
pub const NOT_SPECIFIED: u8 = 0xFF;
pub const YEAR_NOT_SPECIFIED: u16 = 0xFFFF;
pub const DEVIATION_NOT_SPECIFIED: i16 = i16::MIN; // 0x8000

/// Clock status bits.
pub const CLOCK_INVALID: u8 = 0x01;
pub const CLOCK_DOUBTFUL: u8 = 0x02;
pub const CLOCK_DIFFERENT_BASE: u8 = 0x04;
pub const CLOCK_INVALID_STATUS: u8 = 0x08;
pub const CLOCK_DAYLIGHT_SAVING: u8 = 0x80;

/// How a meter model signs the deviation field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviationSign {
    /// The standard: deviation = UTC - local, in minutes (UTC+5 is -300).
    #[default]
    Standard,
    /// The common quirk: deviation = local - UTC (UTC+5 is +300).
    Inverted,
}

/// A COSEM date (5 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    /// 1 = Monday .. 7 = Sunday, 0xFF not specified.
    pub weekday: u8,
}

/// A COSEM time (4 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Time {
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub hundredths: u8,
}

/// A COSEM date-time (12 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DateTime {
    pub date: Date,
    pub time: Time,
    /// Minutes, standard sign (see module docs); [`DEVIATION_NOT_SPECIFIED`] if absent.
    pub deviation: i16,
    /// Clock status bits, 0xFF not specified.
    pub clock_status: u8,
}

impl Date {
    pub fn from_bytes(b: &[u8; 5]) -> Self {
        Date { year: u16::from_be_bytes([b[0], b[1]]), month: b[2], day: b[3], weekday: b[4] }
    }

    pub fn to_bytes(&self) -> [u8; 5] {
        let y = self.year.to_be_bytes();
        [y[0], y[1], self.month, self.day, self.weekday]
    }

    /// Days since 1970-01-01 when year, month and day are specified and valid.
    pub fn days_since_epoch(&self) -> Option<i64> {
        if self.year == YEAR_NOT_SPECIFIED || !(1..=12).contains(&self.month) {
            return None;
        }
        if self.day < 1 || self.day > days_in_month(self.year as i64, self.month) {
            return None;
        }
        Some(days_from_civil(self.year as i64, self.month as i64, self.day as i64))
    }

    /// ISO 8601 date; unspecified or special fields are shown as `*` / named markers.
    pub fn iso(&self) -> String {
        let mut s = String::with_capacity(10);
        if self.year == YEAR_NOT_SPECIFIED {
            s.push_str("****");
        } else {
            let _ = write!(s, "{:04}", self.year);
        }
        s.push('-');
        match self.month {
            0xFF => s.push_str("**"),
            0xFE => s.push_str("DB"), // daylight saving begin
            0xFD => s.push_str("DE"), // daylight saving end
            m => {
                let _ = write!(s, "{m:02}");
            }
        }
        s.push('-');
        match self.day {
            0xFF => s.push_str("**"),
            0xFE => s.push_str("LL"), // last day of month
            0xFD => s.push_str("L2"), // second last day of month
            d => {
                let _ = write!(s, "{d:02}");
            }
        }
        s
    }
}

impl Time {
    pub fn from_bytes(b: &[u8; 4]) -> Self {
        Time { hour: b[0], minute: b[1], second: b[2], hundredths: b[3] }
    }

    pub fn to_bytes(&self) -> [u8; 4] {
        [self.hour, self.minute, self.second, self.hundredths]
    }

    /// Seconds since midnight when hour, minute and second are specified and valid.
    pub fn seconds_of_day(&self) -> Option<i64> {
        if self.hour > 23 || self.minute > 59 || self.second > 59 {
            return None;
        }
        Some(self.hour as i64 * 3600 + self.minute as i64 * 60 + self.second as i64)
    }

    pub fn iso(&self) -> String {
        let mut s = String::with_capacity(11);
        for (i, v) in [self.hour, self.minute, self.second].into_iter().enumerate() {
            if i > 0 {
                s.push(':');
            }
            if v == NOT_SPECIFIED {
                s.push_str("**");
            } else {
                let _ = write!(s, "{v:02}");
            }
        }
        if self.hundredths != NOT_SPECIFIED && self.hundredths != 0 {
            let _ = write!(s, ".{:02}", self.hundredths);
        }
        s
    }
}

impl DateTime {
    pub fn from_bytes(b: &[u8; 12]) -> Self {
        DateTime {
            date: Date::from_bytes(&[b[0], b[1], b[2], b[3], b[4]]),
            time: Time::from_bytes(&[b[5], b[6], b[7], b[8]]),
            deviation: i16::from_be_bytes([b[9], b[10]]),
            clock_status: b[11],
        }
    }

    pub fn to_bytes(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..5].copy_from_slice(&self.date.to_bytes());
        out[5..9].copy_from_slice(&self.time.to_bytes());
        out[9..11].copy_from_slice(&self.deviation.to_be_bytes());
        out[11] = self.clock_status;
        out
    }

    /// The deviation in the standard's sign, or None when not specified.
    pub fn deviation_minutes(&self, sign: DeviationSign) -> Option<i16> {
        if self.deviation == DEVIATION_NOT_SPECIFIED {
            return None;
        }
        Some(match sign {
            DeviationSign::Standard => self.deviation,
            DeviationSign::Inverted => self.deviation.checked_neg()?,
        })
    }

    /// The wall-clock reading as seconds since the epoch, as if it were UTC.
    pub fn local_seconds(&self) -> Option<i64> {
        Some(self.date.days_since_epoch()? * 86_400 + self.time.seconds_of_day()?)
    }

    /// Seconds since the epoch (UTC). The deviation comes from the value itself, or from
    /// `fallback_deviation` (standard sign) when the meter leaves it unspecified; None
    /// when neither says, or when the date or time is not fully specified.
    pub fn to_unix(&self, sign: DeviationSign, fallback_deviation: Option<i16>) -> Option<i64> {
        let local = self.local_seconds()?;
        let dev = self.deviation_minutes(sign).or(fallback_deviation)?;
        if !(-900..=900).contains(&dev) {
            return None;
        }
        Some(local + dev as i64 * 60)
    }

    /// A fully specified date-time for UTC instant `unix`, shown in local time with
    /// `deviation` (standard sign, minutes) and the given clock status.
    pub fn from_unix(unix: i64, deviation: i16, clock_status: u8) -> Self {
        let local = unix - deviation as i64 * 60;
        let days = local.div_euclid(86_400);
        let secs = local.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        // 1970-01-01 was a Thursday (4); COSEM weekdays run Monday = 1 .. Sunday = 7.
        let weekday = ((days + 3).rem_euclid(7) + 1) as u8;
        DateTime {
            date: Date { year: y.clamp(0, 0xFFFE) as u16, month: m as u8, day: d as u8, weekday },
            time: Time {
                hour: (secs / 3600) as u8,
                minute: (secs / 60 % 60) as u8,
                second: (secs % 60) as u8,
                hundredths: 0,
            },
            deviation,
            clock_status,
        }
    }

    /// ISO 8601 with the offset the deviation implies (standard sign), e.g.
    /// `2024-03-01T12:00:00+05:00`; no offset when the deviation is not specified.
    pub fn iso(&self) -> String {
        let mut s = self.date.iso();
        s.push('T');
        s.push_str(&self.time.iso());
        if let Some(dev) = self.deviation_minutes(DeviationSign::Standard) {
            let offset = -(dev as i32);
            let sign = if offset < 0 { '-' } else { '+' };
            let a = offset.abs();
            let _ = write!(s, "{sign}{:02}:{:02}", a / 60, a % 60);
        }
        s
    }

    /// Names of the clock status bits that are set (empty when not specified).
    pub fn clock_status_flags(&self) -> Vec<&'static str> {
        if self.clock_status == NOT_SPECIFIED {
            return Vec::new();
        }
        let names = [
            (CLOCK_INVALID, "invalid-value"),
            (CLOCK_DOUBTFUL, "doubtful-value"),
            (CLOCK_DIFFERENT_BASE, "different-clock-base"),
            (CLOCK_INVALID_STATUS, "invalid-clock-status"),
            (CLOCK_DAYLIGHT_SAVING, "daylight-saving-active"),
        ];
        names.iter().filter(|(bit, _)| self.clock_status & bit != 0).map(|(_, n)| *n).collect()
    }

    /// Parses the fully specified form `YYYY-MM-DDTHH:MM:SS[.hh][±HH:MM|Z]`.
    pub fn parse_iso(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let t = s.get(r)?;
            if !t.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            t.parse().ok()
        };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let mut rest = &s[19..];
        let mut hundredths = 0u8;
        if let Some(r) = rest.strip_prefix('.') {
            let digits: String = r.chars().take_while(|c| c.is_ascii_digit()).collect();
            if digits.is_empty() {
                return None;
            }
            let two = format!("{digits:0<2}");
            hundredths = two[..2].parse().ok()?;
            rest = &r[digits.len()..];
        }
        let deviation = match rest {
            "" => DEVIATION_NOT_SPECIFIED,
            "Z" => 0,
            r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) && &r[3..4] == ":" => {
                let h: i16 = r[1..3].parse().ok()?;
                let m: i16 = r[4..6].parse().ok()?;
                let offset = h * 60 + m;
                if r.starts_with('+') {
                    -offset
                } else {
                    offset
                }
            }
            _ => return None,
        };
        let date = Date { year: u16::try_from(year).ok()?, month: month as u8, day: day as u8, weekday: NOT_SPECIFIED };
        let days = date.days_since_epoch()?;
        let time = Time { hour: hour as u8, minute: minute as u8, second: second as u8, hundredths };
        time.seconds_of_day()?;
        Some(DateTime {
            date: Date { weekday: ((days + 3).rem_euclid(7) + 1) as u8, ..date },
            time,
            deviation,
            clock_status: NOT_SPECIFIED,
        })
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn opt(v: u8) -> Option<u8> {
    (v != NOT_SPECIFIED).then_some(v)
}

// JSON form: readable fields plus the exact bytes. Decoding JSON prefers "hex" (it keeps
// every wildcard and status bit); without it, "iso" must be fully specified.

#[derive(Serialize, Deserialize)]
struct DateTimeJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iso: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
    #[serde(default)]
    deviation: Option<i16>,
    #[serde(default)]
    clock_status: Option<u8>,
    #[serde(default, skip_deserializing, skip_serializing_if = "Vec::is_empty")]
    clock_status_flags: Vec<&'static str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unix: Option<i64>,
}

impl Serialize for DateTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        DateTimeJson {
            iso: Some(self.iso()),
            hex: Some(hex(&self.to_bytes())),
            deviation: self.deviation_minutes(DeviationSign::Standard),
            clock_status: opt(self.clock_status),
            clock_status_flags: self.clock_status_flags(),
            unix: self.to_unix(DeviationSign::Standard, None),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for DateTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = DateTimeJson::deserialize(d)?;
        if let Some(h) = j.hex {
            return unhex::<12>(&h)
                .map(|b| DateTime::from_bytes(&b))
                .ok_or_else(|| D::Error::custom("date-time hex must be 12 bytes"));
        }
        let iso = j.iso.ok_or_else(|| D::Error::custom("date-time needs \"hex\" or \"iso\""))?;
        let mut dt = DateTime::parse_iso(&iso)
            .ok_or_else(|| D::Error::custom(format!("date-time {iso:?} is not YYYY-MM-DDTHH:MM:SS[.hh][+HH:MM]")))?;
        if let Some(dev) = j.deviation {
            dt.deviation = dev;
        }
        if let Some(cs) = j.clock_status {
            dt.clock_status = cs;
        }
        Ok(dt)
    }
}

#[derive(Serialize, Deserialize)]
struct DateJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iso: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
    #[serde(default)]
    weekday: Option<u8>,
}

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        DateJson { iso: Some(self.iso()), hex: Some(hex(&self.to_bytes())), weekday: opt(self.weekday) }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = DateJson::deserialize(d)?;
        if let Some(h) = j.hex {
            return unhex::<5>(&h)
                .map(|b| Date::from_bytes(&b))
                .ok_or_else(|| D::Error::custom("date hex must be 5 bytes"));
        }
        let iso = j.iso.ok_or_else(|| D::Error::custom("date needs \"hex\" or \"iso\""))?;
        let dt = DateTime::parse_iso(&format!("{iso}T00:00:00"))
            .ok_or_else(|| D::Error::custom(format!("date {iso:?} is not YYYY-MM-DD")))?;
        Ok(Date { weekday: j.weekday.unwrap_or(dt.date.weekday), ..dt.date })
    }
}

#[derive(Serialize, Deserialize)]
struct TimeJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iso: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TimeJson { iso: Some(self.iso()), hex: Some(hex(&self.to_bytes())) }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = TimeJson::deserialize(d)?;
        if let Some(h) = j.hex {
            return unhex::<4>(&h)
                .map(|b| Time::from_bytes(&b))
                .ok_or_else(|| D::Error::custom("time hex must be 4 bytes"));
        }
        let iso = j.iso.ok_or_else(|| D::Error::custom("time needs \"hex\" or \"iso\""))?;
        let dt = DateTime::parse_iso(&format!("2000-01-01T{iso}"))
            .ok_or_else(|| D::Error::custom(format!("time {iso:?} is not HH:MM:SS[.hh]")))?;
        Ok(dt.time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tashkent_noon() -> DateTime {
        // 2024-03-01 12:00:00 local, Friday, deviation -300 (UTC+5), status OK.
        DateTime::from_bytes(&[0x07, 0xE8, 3, 1, 5, 12, 0, 0, 0, 0xFE, 0xD4, 0x00])
    }

    #[test]
    fn converts_with_the_standard_deviation_sign() {
        let dt = tashkent_noon();
        assert_eq!(dt.deviation, -300);
        assert_eq!(dt.iso(), "2024-03-01T12:00:00+05:00");
        // 12:00 at UTC+5 is 07:00Z.
        assert_eq!(dt.to_unix(DeviationSign::Standard, None), Some(1_709_276_400));
        // A meter with the inverted sign would mean UTC-5, i.e. 17:00Z.
        assert_eq!(dt.to_unix(DeviationSign::Inverted, None), Some(1_709_276_400 + 10 * 3600));
    }

    #[test]
    fn round_trips_through_unix() {
        let dt = DateTime::from_unix(1_709_276_400, -300, 0);
        assert_eq!(dt, tashkent_noon());
        for t in [0i64, 951_782_400, 4_102_444_799, 1_709_276_399] {
            let d = DateTime::from_unix(t, 0, 0);
            assert_eq!(d.to_unix(DeviationSign::Standard, None), Some(t));
        }
    }

    #[test]
    fn unspecified_fields_block_conversion_but_render() {
        let mut dt = tashkent_noon();
        dt.deviation = DEVIATION_NOT_SPECIFIED;
        assert_eq!(dt.iso(), "2024-03-01T12:00:00");
        assert_eq!(dt.to_unix(DeviationSign::Standard, None), None);
        assert_eq!(dt.to_unix(DeviationSign::Standard, Some(-300)), Some(1_709_276_400));
        let pattern = DateTime::from_bytes(&[0xFF, 0xFF, 0xFF, 0xFE, 0xFF, 0, 0, 0xFF, 0xFF, 0x80, 0, 0xFF]);
        assert_eq!(pattern.iso(), "****-**-LLT00:00:**");
        assert_eq!(pattern.to_unix(DeviationSign::Standard, Some(0)), None);
    }

    #[test]
    fn invalid_calendar_dates_do_not_convert() {
        let feb30 = DateTime::from_bytes(&[0x07, 0xE8, 2, 30, 0xFF, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(feb30.to_unix(DeviationSign::Standard, None), None);
        let leap = DateTime::from_bytes(&[0x07, 0xE8, 2, 29, 0xFF, 0, 0, 0, 0, 0, 0, 0]);
        assert!(leap.to_unix(DeviationSign::Standard, None).is_some());
    }

    #[test]
    fn parses_iso_back() {
        let dt = DateTime::parse_iso("2024-03-01T12:00:00+05:00").unwrap();
        assert_eq!(dt.deviation, -300);
        assert_eq!(dt.date.weekday, 5);
        assert_eq!(dt.to_unix(DeviationSign::Standard, None), Some(1_709_276_400));
        assert!(DateTime::parse_iso("2024-13-01T12:00:00").is_none());
        assert!(DateTime::parse_iso("2024-03-01 12:00:00").is_none());
    }

    #[test]
    fn json_keeps_exact_bytes() {
        let dt = tashkent_noon();
        let j = serde_json::to_value(dt).unwrap();
        assert_eq!(j["iso"], "2024-03-01T12:00:00+05:00");
        assert_eq!(j["unix"], 1_709_276_400);
        let back: DateTime = serde_json::from_value(j).unwrap();
        assert_eq!(back, dt);
        let from_iso: DateTime =
            serde_json::from_value(serde_json::json!({"iso": "2024-03-01T12:00:00+05:00", "clock_status": 0})).unwrap();
        assert_eq!(from_iso, dt);
    }

    #[test]
    fn calendar_matches_known_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in [-1_000_000i64, -1, 0, 59, 60, 11_016, 19_782, 2_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
