//! Any bytes as an encoded search filter: compiled or refused naming a field, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = contactier_contacts::fuzzing::search_filter(data);
});
