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
