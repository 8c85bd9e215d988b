//! An `_mget` answer: parsed for N documents asked (the first byte), each stored document found
//! merged with a partial update's fields; the merged document is a JSON object serde_json
//! reads. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walcast_fuzz::check_json;

const FIELDS: &[u8] = br#"{"title":"new \"title\"","n":12345678901234567890123,"tags":["a",null],"nested":{"x":1.5e300}}"#;

fuzz_target!(|data: &[u8]| {
    let Some((&asked, body)) = data.split_first() else { return };
    let Ok(docs) = walcast::fuzzing::mget_answer(body, usize::from(asked), FIELDS) else { return };
    assert_eq!(docs.len(), usize::from(asked));
    for merged in docs.into_iter().flatten() {
        // The stored document's numbers are copied as they are, in range or not.
        if let Some(doc) = check_json("a merged document", &merged, true) {
            assert!(doc.is_object());
        }
    }
});
