//! A `_bulk` answer: parsed for N actions sent (the first byte) and every item classified, or a
//! typed `AnswerError`; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sent, body)) = data.split_first() else { return };
    if let Ok(outcomes) = walcast::fuzzing::bulk_answer(body, usize::from(sent)) {
        assert_eq!(outcomes.len(), 2 * usize::from(sent));
    }
});
