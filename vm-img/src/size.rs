//! Sizes on the command line: `10G`, `512K`, `1048576`.

/// Parses a byte count with an optional K, M, G, T, P or E suffix
/// (powers of 1024, as vmctl and qemu-img take them).
pub fn parse(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.as_bytes().last()? {
        b'0'..=b'9' => (s, 0),
        c => {
            let shift = match c.to_ascii_uppercase() {
                b'B' => 0,
                b'K' => 10,
                b'M' => 20,
                b'G' => 30,
                b'T' => 40,
                b'P' => 50,
                b'E' => 60,
                _ => return None,
            };
            (&s[..s.len() - 1], shift)
        }
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse("10G"), Some(10 << 30));
        assert_eq!(parse("512k"), Some(512 << 10));
        assert_eq!(parse("4096"), Some(4096));
        assert_eq!(parse("1T"), Some(1 << 40));
        for bad in ["", "G", "1.5G", "-1", "10X", "99999999999E"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
