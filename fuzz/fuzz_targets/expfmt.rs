//! Feeds arbitrary bytes to the page parser the way a scrape does: as text
//! 0.0.4 and as OpenMetrics, item by item, with every sample's labels
//! decoded and its series identity written; and through `scrape_page`
//! twice on one host state (the second pass takes the hinted fast path).
//! Parsing must answer an error on bad input, never panic, and allocate
//! only in proportion to the input.
//!
//! Run with `cargo +nightly fuzz run expfmt` from this directory.

#![no_main]

use fleetcheck::checks::Checks;
use fleetcheck::expfmt::{Format, Item, Parser};
use fleetcheck::state::{HostState, scrape_page};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let checks = Checks::builtin();
    let mut buf = String::new();
    for format in [Format::Text, Format::OpenMetrics] {
        for item in Parser::with_format(data, format) {
            if let Ok(Item::Sample(s)) = item {
                let _ = s.labels.iter().count();
                let _ = s.series_key(&mut buf).len();
            }
        }
        let mut st = HostState::new(0);
        let _ = scrape_page(&mut st, &checks, data, format, 0, 0.0);
        let _ = scrape_page(&mut st, &checks, data, format, 1, 15.0);
    }
});
