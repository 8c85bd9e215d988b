use super::*;

fn text(kind: Kind, v: &[u8]) -> String {
    let mut out = Vec::new();
    write_kind(&mut out, kind, v).expect("valid");
    String::from_utf8(out).expect("utf-8")
}

fn write_text_once(out: &mut Vec<u8>, kind: Kind, v: &[u8]) -> Result<(), String> {
    write_kind(out, kind, v)
}

/// A numeric's send format from its parts.
fn numeric(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in [digits.len() as u16, weight as u16, sign, dscale].into_iter().chain(digits.iter().copied()) {
        v.extend_from_slice(&f.to_be_bytes());
    }
    v
}

#[test]
fn numerics_read_as_numeric_out_writes_them() {
    assert_eq!(text(Kind::Numeric, &numeric(0, 0, 0, &[])), "0");
    assert_eq!(text(Kind::Numeric, &numeric(0, 0, 2, &[])), "0.00");
    assert_eq!(text(Kind::Numeric, &numeric(0, 0, 1, &[1, 5000])), "1.5");
    assert_eq!(text(Kind::Numeric, &numeric(-1, 0, 1, &[5000])), "0.5");
    assert_eq!(text(Kind::Numeric, &numeric(1, 0x4000, 0, &[12, 3400])), "-123400");
    assert_eq!(text(Kind::Numeric, &numeric(2, 0, 0, &[1])), "100000000");
    assert_eq!(text(Kind::Numeric, &numeric(-2, 0, 6, &[1200])), "0.000012");
    assert_eq!(text(Kind::Numeric, &numeric(0, 0, 7, &[3, 1415, 9265])), "3.1415926");
    assert_eq!(text(Kind::Numeric, &numeric(0, 0xC000, 0, &[])), "NaN");
    assert_eq!(text(Kind::Numeric, &numeric(0, 0xD000, 0, &[])), "Infinity");
    assert_eq!(text(Kind::Numeric, &numeric(0, 0xF000, 0, &[])), "-Infinity");
    let mut out = Vec::new();
    assert!(write_text_once(&mut out, Kind::Numeric, &numeric(0, 0, 0, &[10000])).is_err(), "a digit past 9999");
    assert!(write_text_once(&mut out, Kind::Numeric, &numeric(0, 0x1234, 0, &[])).is_err(), "an unknown sign");
    assert!(write_text_once(&mut out, Kind::Numeric, &[0, 1, 0, 0]).is_err(), "short");
}

#[test]
fn dates_and_timestamps_read_as_their_iso_text_in_utc() {
    let ts = |micros: i64| micros.to_be_bytes();
    assert_eq!(text(Kind::Timestamptz, &ts(0)), "2000-01-01 00:00:00+00");
    assert_eq!(text(Kind::Timestamp, &ts(1_500)), "2000-01-01 00:00:00.0015");
    assert_eq!(text(Kind::Timestamp, &ts(-1)), "1999-12-31 23:59:59.999999");
    assert_eq!(text(Kind::Timestamptz, &ts(i64::MAX)), "infinity");
    assert_eq!(text(Kind::Timestamp, &ts(i64::MIN)), "-infinity");
    // 0001-01-01 is 730,119 days before 2000-01-01; the day before it is 1 BC.
    assert_eq!(text(Kind::Timestamptz, &ts(-730_119 * MICROS_PER_DAY)), "0001-01-01 00:00:00+00");
    assert_eq!(text(Kind::Timestamptz, &ts(-730_120 * MICROS_PER_DAY + 1_000_000)), "0001-12-31 00:00:01+00 BC");
    assert_eq!(text(Kind::Date, &(-730_120i32).to_be_bytes()), "0001-12-31 BC");
    assert_eq!(text(Kind::Date, &9_862i32.to_be_bytes()), "2027-01-01");
    assert_eq!(text(Kind::Date, &i32::MAX.to_be_bytes()), "infinity");
    assert_eq!(text(Kind::Date, &2_921_940i32.to_be_bytes()), "10000-01-01");
}

#[test]
fn other_kinds_read_as_their_output_function_writes_them() {
    assert_eq!(text(Kind::Bool, &[1]), "t");
    assert_eq!(text(Kind::Bool, &[0]), "f");
    assert_eq!(text(Kind::Int2, &(-32768i16).to_be_bytes()), "-32768");
    assert_eq!(text(Kind::Int4, &7i32.to_be_bytes()), "7");
    assert_eq!(text(Kind::Int8, &i64::MIN.to_be_bytes()), "-9223372036854775808");
    let uuid = [0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11];
    assert_eq!(text(Kind::Uuid, &uuid), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    let mut out = Vec::new();
    assert!(write_text_once(&mut out, Kind::Int4, &[0, 1]).is_err());
}

/// A value's JSON written straight from its send format is byte for byte the JSON of its text
/// (the rule a streamed value takes), for edge values and many pseudo-random ones.
#[test]
fn json_from_the_send_format_is_the_json_of_its_text() {
    let check = |type_oid: u32, v: &[u8]| {
        let mut text = Vec::new();
        write_text(&mut text, type_oid, v).expect("a valid value");
        let mut want = Vec::new();
        write_json_value(&mut want, type_oid, &text).expect("valid text");
        let mut got = Vec::new();
        write_json_binary(&mut got, type_oid, v).expect("a valid value");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "type {type_oid}, text {}",
            String::from_utf8_lossy(&text)
        );
    };
    // splitmix64: the same values every run.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for v in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX] {
        check(20, &v.to_be_bytes());
        check(23, &(v as i32).to_be_bytes());
        check(21, &(v as i16).to_be_bytes());
    }
    check(16, &[0]);
    check(16, &[1]);
    let year_1 = -730_119 * MICROS_PER_DAY;
    // 10000-01-01: 2,921,940 days after 2000-01-01.
    let year_10000 = 2_921_940 * MICROS_PER_DAY;
    // Postgres's range: 4713 BC to 294276 AD.
    let (low, high) = (-211_813_488_000_000_000i64, 9_223_371_331_200_000_000i64);
    let mut stamps = vec![i64::MIN, i64::MAX, low, high, 0, -1, 1, year_1, year_1 - 1, year_10000, year_10000 - 1];
    for _ in 0..20_000 {
        let r = next();
        stamps.push(match r % 4 {
            // Anywhere in the range, with any fraction.
            0 => low + ((r >> 2) % (i128::from(high) - i128::from(low)) as u64) as i64,
            // 1900 to 2100, whole seconds, milliseconds or any fraction.
            n => {
                let micros = -3_155_673_600_000_000 + ((r >> 2) % 6_311_347_200_000_000) as i64;
                match n {
                    1 => micros - micros.rem_euclid(1_000_000),
                    2 => micros - micros.rem_euclid(1_000),
                    _ => micros,
                }
            }
        });
    }
    for micros in stamps {
        check(1114, &micros.to_be_bytes());
        check(1184, &micros.to_be_bytes());
        check(1082, &((micros.div_euclid(MICROS_PER_DAY)).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32).to_be_bytes());
    }
    check(1082, &i32::MIN.to_be_bytes());
    for special in [0xC000, 0xD000, 0xF000] {
        check(1700, &numeric(0, special, 0, &[]));
    }
    for _ in 0..20_000 {
        let r = next();
        let digits: Vec<u16> = (0..r % 6).map(|i| ((r >> (8 + i * 8)) % 10_000) as u16).collect();
        let weight = ((r >> 3) % 9) as i16 - 3;
        let dscale = ((r >> 7) % 13) as u16;
        let sign = if r & 1 == 0 { 0 } else { 0x4000 };
        check(1700, &numeric(weight, sign, dscale, &digits));
        let uuid: Vec<u8> = next().to_be_bytes().into_iter().chain(r.to_le_bytes()).collect();
        check(2950, &uuid);
    }
}
