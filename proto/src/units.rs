//! Human sizes for command lines and reports: `500M`, `10G`, `1.5T`, or plain bytes.

/// Parses a size; units are powers of 1024.
pub fn parse(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let mult: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("size {s:?}: unknown unit (use K, M, G or T)")),
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    let n: f64 = num.trim().parse().map_err(|_| format!("size {s:?} is not a number"))?;
    if !(0.0..=1e19).contains(&n) {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok((n * mult as f64) as u64)
}

/// A size for people: `1.5 GiB`.
pub fn show(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse("100").unwrap(), 100);
        assert_eq!(super::parse("10K").unwrap(), 10240);
        assert_eq!(super::parse("1.5G").unwrap(), 1610612736);
        assert_eq!(super::parse("2MiB").unwrap(), 2 << 20);
        assert!(super::parse("ten").is_err());
        assert!(super::parse("5X").is_err());
        assert_eq!(super::show(1536), "1.5 KiB");
    }
}

/// Parses a point in time: seconds since the epoch (with a fraction, if wanted), or a UTC date
/// and time as
/// `YYYY-MM-DDTHH:MM:SSZ` or `YYYYMMDDTHHMMSSZ` (what venus and vos print).
pub fn parse_time(s: &str) -> Result<crate::attr::Timestamp, String> {
    let bad = || format!("{s:?}: give seconds since 1970 or a UTC time like 2026-11-22T07:30:00Z");
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(crate::attr::Timestamp { secs, nanos: 0 });
    }
    // Seconds with a fraction, as `vos dump` prints them: 1795332600.123456789
    if let Some((whole, frac)) = s.split_once('.')
        && let Ok(secs) = whole.parse::<i64>()
        && !frac.is_empty()
        && frac.len() <= 9
        && frac.chars().all(|c| c.is_ascii_digit())
    {
        let nanos = format!("{frac:0<9}").parse::<u32>().map_err(|_| bad())?;
        return Ok(crate::attr::Timestamp { secs, nanos });
    }
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
    if !s.ends_with('Z') || digits.len() != 14 {
        return Err(bad());
    }
    let n = |a: usize, b: usize| digits[a..b].parse::<i64>().map_err(|_| bad());
    let (y, mo, d, h, mi, se) = (n(0, 4)?, n(4, 6)?, n(6, 8)?, n(8, 10)?, n(10, 12)?, n(12, 14)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(crate::attr::Timestamp { secs: days * 86_400 + h * 3600 + mi * 60 + se, nanos: 0 })
}

#[cfg(test)]
mod time_tests {
    use super::parse_time;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("0").unwrap().secs, 0);
        assert_eq!(parse_time("1970-01-02T00:00:00Z").unwrap().secs, 86_400);
        assert_eq!(parse_time("20261122T073000Z").unwrap().secs, 1_795_332_600);
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_time("12.5").unwrap(), crate::attr::Timestamp { secs: 12, nanos: 500_000_000 });
        assert!(parse_time("2026-13-01T00:00:00Z").is_err());
    }
}
