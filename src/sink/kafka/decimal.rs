//! Exact numbers for Connect's `Decimal`: a decimal text turned into its unscaled value as
//! big-endian two's-complement bytes (what Java's `BigInteger.toByteArray` gives), plus the
//! `numeric` type modifier, `money` text and bit strings.

/// A decimal number split into its digits and scale.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Decimal {
    /// Negative.
    pub negative: bool,
    /// Every digit, without the point, leading zeros removed (empty for zero).
    pub digits: Vec<u8>,
    /// Digits after the point.
    pub scale: i32,
}

impl Decimal {
    /// Parse `[-]digits[.digits]` (what Postgres prints for a finite `numeric`); `None` for
    /// anything else (NaN, infinities).
    pub(super) fn parse(text: &[u8]) -> Option<Decimal> {
        let (negative, body) = match text.first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (int, frac) = match body.iter().position(|&b| b == b'.') {
            Some(dot) => (&body[..dot], &body[dot + 1..]),
            None => (body, &b""[..]),
        };
        if int.is_empty() && frac.is_empty() || !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return None;
        }
        let digits: Vec<u8> = int.iter().chain(frac).map(|d| d - b'0').skip_while(|&d| d == 0).collect();
        Some(Decimal { negative, digits, scale: i32::try_from(frac.len()).ok()? })
    }

    /// The same number with `scale` digits after the point: zeros appended, or trailing zeros
    /// removed; `None` when a non-zero digit would be lost.
    pub(super) fn rescale(mut self, scale: i32) -> Option<Decimal> {
        while self.scale < scale {
            if !self.digits.is_empty() {
                self.digits.push(0);
            }
            self.scale += 1;
        }
        while self.scale > scale {
            match self.digits.last() {
                Some(0) => {
                    self.digits.pop();
                }
                Some(_) => return None,
                None => {}
            }
            self.scale -= 1;
        }
        Some(self)
    }

    /// The unscaled value as minimal big-endian two's-complement bytes.
    pub(super) fn unscaled_bytes(&self) -> Vec<u8> {
        // Magnitude in base 256, little-endian, built digit by digit.
        let mut mag: Vec<u8> = Vec::new();
        for &d in &self.digits {
            let mut carry = u32::from(d);
            for byte in mag.iter_mut() {
                let v = u32::from(*byte) * 10 + carry;
                *byte = v as u8;
                carry = v >> 8;
            }
            while carry > 0 {
                mag.push(carry as u8);
                carry >>= 8;
            }
        }
        if self.negative && !mag.is_empty() {
            // Two's complement: invert and add one.
            let mut carry = 1u16;
            for byte in mag.iter_mut() {
                let v = u16::from(!*byte) + carry;
                *byte = v as u8;
                carry = v >> 8;
            }
            if mag.last().is_some_and(|b| b & 0x80 == 0) {
                mag.push(0xff);
            }
            while mag.len() > 1 && mag[mag.len() - 1] == 0xff && mag[mag.len() - 2] & 0x80 != 0 {
                mag.pop();
            }
        } else if mag.last().is_none_or(|b| b & 0x80 != 0) {
            mag.push(0);
        }
        mag.reverse();
        mag
    }
}

/// Precision and scale of a `numeric(p, s)` type modifier (`None`: unconstrained). The scale
/// may be negative (Postgres 15).
pub(super) fn numeric_typmod(typmod: i32) -> Option<(i32, i32)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    Some(((t >> 16) & 0xffff, scale))
}

/// `money` as Postgres prints it (`$1,234.56`, `-$1.50`) -> the decimal text (`1234.56`).
pub(super) fn money_text(text: &[u8]) -> Option<String> {
    let negative = text.first() == Some(&b'-') || text.first() == Some(&b'(');
    let mut s = String::from(if negative { "-" } else { "" });
    let mut any = false;
    for &b in text {
        if b.is_ascii_digit() || b == b'.' {
            any |= b.is_ascii_digit();
            s.push(b as char);
        }
    }
    any.then_some(s)
}

/// A bit string (`10101010`) as Debezium's `Bits`: the last character is bit 0, bytes
/// little-endian, `ceil(len / 8)` of them.
pub(super) fn bits_bytes(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; text.len().div_ceil(8)];
    for (i, &c) in text.iter().rev().enumerate() {
        match c {
            b'1' => out[i / 8] |= 1 << (i % 8),
            b'0' => {}
            _ => return None,
        }
    }
    Some(out)
}

/// A `point` (`(1.5,-2)`) as its coordinates.
pub(super) fn point_xy(text: &[u8]) -> Option<(f64, f64)> {
    let s = std::str::from_utf8(text).ok()?.strip_prefix('(')?.strip_suffix(')')?;
    let (x, y) = s.split_once(',')?;
    Some((x.parse().ok()?, y.parse().ok()?))
}

/// Well-known binary of a 2D point (little-endian), as Debezium's `Point.wkb`.
pub(super) fn point_wkb(x: f64, y: f64) -> Vec<u8> {
    let mut w = Vec::with_capacity(21);
    w.push(1);
    w.extend_from_slice(&1u32.to_le_bytes());
    w.extend_from_slice(&x.to_le_bytes());
    w.extend_from_slice(&y.to_le_bytes());
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &str, scale: i32) -> Vec<u8> {
        Decimal::parse(text.as_bytes()).and_then(|d| d.rescale(scale)).expect("decimal").unscaled_bytes()
    }

    #[test]
    fn unscaled_bytes_are_javas_big_integer() {
        assert_eq!(bytes("0", 0), vec![0]);
        assert_eq!(bytes("0.00", 2), vec![0]);
        assert_eq!(bytes("1", 0), vec![1]);
        assert_eq!(bytes("127", 0), vec![0x7f]);
        assert_eq!(bytes("128", 0), vec![0, 0x80]);
        assert_eq!(bytes("-1", 0), vec![0xff]);
        assert_eq!(bytes("-128", 0), vec![0x80]);
        assert_eq!(bytes("-129", 0), vec![0xff, 0x7f]);
        assert_eq!(bytes("-256", 0), vec![0xff, 0x00]);
        assert_eq!(bytes("1234.56", 2), vec![0x01, 0xe2, 0x40]);
        assert_eq!(bytes("-1.50", 2), vec![0xff, 0x6a]);
        assert_eq!(bytes("12.5", 2), vec![0x04, 0xe2]);
        // 2^64 = 18446744073709551616
        assert_eq!(bytes("18446744073709551616", 0), vec![1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Decimal::parse(b"12300").and_then(|d| d.rescale(-2)).map(|d| d.unscaled_bytes()), Some(vec![123]));
        assert_eq!(Decimal::parse(b"1.25").and_then(|d| d.rescale(1)), None);
        assert_eq!(Decimal::parse(b"NaN"), None);
    }

    #[test]
    fn typmod_money_bits_point() {
        // numeric(10, 2): ((10 << 16) | 2) + 4
        assert_eq!(numeric_typmod((10 << 16 | 2) + 4), Some((10, 2)));
        assert_eq!(numeric_typmod(-1), None);
        // numeric(5, -2)
        assert_eq!(numeric_typmod((5 << 16 | (-2i32 & 0x7ff)) + 4), Some((5, -2)));
        assert_eq!(money_text(b"$1,234.56").as_deref(), Some("1234.56"));
        assert_eq!(money_text(b"-$1.50").as_deref(), Some("-1.50"));
        assert_eq!(bits_bytes(b"10101010"), Some(vec![0xaa]));
        assert_eq!(bits_bytes(b"101"), Some(vec![0x05]));
        assert_eq!(bits_bytes(b"100000000"), Some(vec![0x00, 0x01]));
        assert_eq!(bits_bytes(b""), Some(vec![]));
        assert_eq!(point_xy(b"(1.5,-2)"), Some((1.5, -2.0)));
        assert_eq!(point_wkb(1.0, 2.0).len(), 21);
    }
}
