//! Feeds arbitrary bytes to the wire codec the way the parent and the
//! workers read their channel: frames split with `check_frame`, each body
//! decoded with `Message::decode`, RESULTS outcomes iterated and panic
//! payloads decoded. Decoding must answer an error on bad input, never
//! panic, and never allocate more than the frame cap.
//!
//! Run with `cargo +nightly fuzz run decode` from this directory.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    multiloop::__private::fuzz_decode(data);
});
