//! One text value of one type: `write_json_value` appends JSON that serde_json reads, or returns
//! a typed error and leaves the output as it was; never a panic. The first byte picks the type
//! OID from every OID with its own rule (scalars, every built-in array type) and a few that take
//! the string rule; 0xff takes the next four bytes as any OID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walcast::decode::{to_json_value, write_json_value};
use walcast_fuzz::check_json;

/// Scalars with their own rule, then types rendered as strings (text, name, interval, inet,
/// money, point, box, ...), then every built-in array type.
const OIDS: &[u32] = &[
    16, 17, 20, 21, 23, 26, 114, 700, 701, 1082, 1083, 1114, 1184, 1266, 1700, 2950, 3802, // own rules
    18, 19, 25, 1043, 1042, 1186, 869, 650, 790, 600, 603, 3904, 142, 1560, 3614, 0, 16_384, // strings
    1000, 1001, 1002, 1003, 1016, 1005, 1006, 1007, 1008, 1009, 1028, 1010, 1011, 1012, 1013, 210, 270, 272, 273, 199, 143, 271, 1017,
    1018, 1019, 1020, 1027, 629, 1021, 1022, 719, 791, 1040, 1041, 651, 775, 1034, 1014, 1015, 1182, 1183, 1115, 1185, 1187, 1270, 1561,
    1563, 1231, 2201, 2207, 2208, 2209, 2210, 4192, 2211, 4097, 4090, 2951, 3221, 3643, 3644, 3645, 3735, 3770, 3807, 4073, 2949, 5039,
    3905, 3907, 3909, 3911, 3913, 3927, 6150, 6151, 6152, 6153, 6155, 6157, 2287, 1263,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let (oid, text) = if pick == 0xff && rest.len() >= 4 {
        (u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]), &rest[4..])
    } else {
        (OIDS[usize::from(pick) % OIDS.len()], rest)
    };
    let mut out = b"[1,".to_vec();
    match write_json_value(&mut out, oid, text) {
        Ok(()) => {
            // Numbers past a double's range only inside json/jsonb (and their arrays), which
            // are embedded as they are; a float must be in range.
            let big_numbers = matches!(oid, 114 | 3802 | 199 | 3807);
            if let Some(value) = check_json("a rendered value", &out[3..], big_numbers) {
                // The serde_json form is the same value.
                assert_eq!(to_json_value(oid, text).expect("renders twice the same"), value);
            }
        }
        Err(_) => assert_eq!(out, b"[1,", "a failed value left output behind"),
    }
});
