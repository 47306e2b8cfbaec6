//! Any bytes as an import file: read and every row checked, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = contactier_contacts::fuzzing::import_file(data);
});
