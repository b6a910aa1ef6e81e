//! Pages kept between scrapes and patched in place.
//!
//! Most of a page does not change from one round to the next: the HELP and
//! TYPE lines, the series keys and the constant values (units, textfile
//! mtimes, sizes) are the same bytes every round. A host's page is kept
//! with the place of every value that can change (a [`Slot`]); the next
//! scrape of that host computes only those values and writes their digits
//! over the old ones. The page is then the same bytes a fresh render gives:
//! a value whose spelling changes length, or a line that appears or
//! vanishes (an injected anomaly), makes a fresh render instead, and so
//! does a page still held by a response being sent.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::{Curve, DIGIT_PAIRS, Fleet, Override, same_width, scaled, write_fixed};

/// The kept page of each host.
pub(super) struct Pages {
    hosts: Vec<Mutex<Option<Arc<Kept>>>>,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("hosts", &self.hosts.len())
            .finish()
    }
}

/// One host's page and where its changing values are.
#[derive(Default)]
struct Kept {
    text: Vec<u8>,
    /// Series left out of the page (sorted).
    omitted: Vec<u32>,
    slots: Vec<Slot>,
}

/// A value that can change between rounds: its place in the page and how
/// to compute it.
#[derive(Clone, Copy)]
struct Slot {
    at: u32,
    len: u8,
    dec: u8,
    series: u32,
    /// The value now written, in units of its last decimal.
    n: i64,
    /// None: through [`Fleet::value`] (values derived from others, series
    /// an injection touches).
    curve: Option<Curve>,
}

/// A kept page lent to a response: the page is patched again only once
/// every such loan has been dropped.
struct Loan(Arc<Kept>);

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        &self.0.text
    }
}

impl Pages {
    /// Room for `hosts` hosts (ids `0..hosts`).
    pub(super) fn new(hosts: usize) -> Self {
        Pages {
            hosts: (0..hosts).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Host `host`'s plain page at `round` (the bytes of
    /// [`Fleet::render`]).
    pub(super) fn page(&self, fleet: &Fleet, host: u32, round: u64) -> Bytes {
        let ovs = fleet.overrides(host, round);
        let omitted: Vec<u32> = ovs
            .iter()
            .filter(|o| matches!(o.1, Override::Omit))
            .map(|o| o.0)
            .collect();
        let Some(cell) = self.hosts.get(host as usize) else {
            let mut k = Kept::default();
            k.render(fleet, host, round, &ovs, omitted);
            return Bytes::from(k.text);
        };
        // A panic while patching leaves nothing behind (the page was
        // taken out first).
        let mut guard = cell.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept = match guard.take().map(Arc::try_unwrap) {
            Some(Ok(k)) => k,
            // None yet, or still lent to a response being sent.
            _ => Kept::default(),
        };
        // (A page is never empty: an empty one was never rendered.)
        if kept.text.is_empty() || kept.omitted != omitted || !kept.patch(fleet, host, round, &ovs)
        {
            kept.render(fleet, host, round, &ovs, omitted);
        }
        let kept = Arc::new(kept);
        *guard = Some(kept.clone());
        drop(guard);
        Bytes::from_owner(Loan(kept))
    }
}

impl Kept {
    /// Render the page afresh and note its slots.
    fn render(
        &mut self,
        fleet: &Fleet,
        host: u32,
        round: u64,
        ovs: &[(u32, Override)],
        omitted: Vec<u32>,
    ) {
        self.text.clear();
        self.slots.clear();
        self.omitted = omitted;
        let slots = &mut self.slots;
        let text = &mut self.text;
        fleet.render_marked(host, round, None, ovs, text, |s, n, r| {
            let injected = fleet.injected(host, s);
            if !injected && !fleet.varies(s) {
                return;
            }
            // A spelling that is not a fixed-decimal number, or too long,
            // fits no other value (len 0): the next round renders afresh.
            let (n, len) = match (n, u8::try_from(r.len())) {
                (Some(n), Ok(len)) => (n, len),
                _ => (i64::MIN, 0),
            };
            slots.push(Slot {
                at: r.start as u32,
                len,
                dec: fleet.tpl.specs[s as usize].dec,
                series: s,
                n,
                curve: if injected { None } else { fleet.curve(host, s) },
            });
        });
    }

    /// Write `round`'s values over the slots (a value whose spelling
    /// grows or shrinks moves the rest of the page); false (page half
    /// written) for a value that is not a fixed-decimal number.
    fn patch(&mut self, fleet: &Fleet, host: u32, round: u64, ovs: &[(u32, Override)]) -> bool {
        // How far the values after a resized one have moved.
        let mut shift = 0isize;
        for slot in &mut self.slots {
            slot.at = slot.at.wrapping_add_signed(shift as i32);
            let v = match slot.curve {
                Some(c) => c.at(round),
                None => {
                    let ov = ovs.iter().find(|o| o.0 == slot.series).map(|o| &o.1);
                    match fleet.value(host, slot.series, round, ov) {
                        Some(v) => v,
                        None => return false,
                    }
                }
            };
            let Some(n) = scaled(v, slot.dec) else {
                return false;
            };
            if n == slot.n {
                continue;
            }
            let (at, len) = (slot.at as usize, usize::from(slot.len));
            let Some(old) = self.text.get_mut(at..at + len) else {
                return false;
            };
            if same_width(n, slot.n, len, slot.dec) {
                rewrite_digits(old, slot.n, n, slot.dec);
            } else {
                let mut buf = [0u8; 40];
                let i = write_fixed(&mut buf, 40, n, slot.dec);
                self.text.splice(at..at + len, buf[i..].iter().copied());
                shift += (40 - i) as isize - len as isize;
                slot.len = (40 - i) as u8;
            }
            slot.n = n;
        }
        true
    }
}

/// Turn `buf`, `old` spelled with `dec` decimals (as [`write_fixed`]
/// writes it), into `new` of the same sign and length: only the digits up
/// to the highest one that differs are written (a counter's top digits
/// stay), two at a time.
#[inline]
fn rewrite_digits(buf: &mut [u8], old: i64, new: i64, dec: u8) {
    let (mut a, mut b) = (new.unsigned_abs(), old.unsigned_abs());
    let mut i = buf.len();
    // Same length and sign: once the rest of both numbers agree, so does
    // the rest of the spelling (zero padding, sign).
    let dec = dec.min(9);
    // The fraction two digits at a time too (a pair whose upper digit did
    // not change rewrites it with the same byte).
    for _ in 0..dec / 2 {
        if a == b {
            return;
        }
        pair_down(buf, &mut i, &mut a, &mut b);
    }
    if dec % 2 == 1 {
        if a == b {
            return;
        }
        digit_down(buf, &mut i, &mut a, &mut b);
    }
    if dec > 0 {
        i -= 1;
    }
    let start = usize::from(new < 0);
    while a != b {
        if i >= start + 2 {
            pair_down(buf, &mut i, &mut a, &mut b);
        } else {
            digit_down(buf, &mut i, &mut a, &mut b);
        }
    }
}

/// Writes the last two digits of `a` just before `buf[i]` and drops them
/// from `a` and from `b` (the number it replaces).
#[inline(always)]
fn pair_down(buf: &mut [u8], i: &mut usize, a: &mut u64, b: &mut u64) {
    let q = *a / 100;
    let pair = (*a - q * 100) as usize * 2;
    *i -= 2;
    buf[*i..*i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    *a = q;
    *b /= 100;
}

/// [`pair_down`] for one digit.
#[inline(always)]
fn digit_down(buf: &mut [u8], i: &mut usize, a: &mut u64, b: &mut u64) {
    *i -= 1;
    buf[*i] = b'0' + (*a % 10) as u8;
    *a /= 10;
    *b /= 10;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::FleetConfig;
    use super::*;

    fn fleet(hosts: u32, series: u32, rounds: u64) -> Fleet {
        Fleet::new(FleetConfig {
            hosts,
            series,
            rounds,
            ..Default::default()
        })
    }

    fn fresh(f: &Fleet, host: u32, round: u64) -> Vec<u8> {
        let mut out = Vec::new();
        f.render(host, round, &mut out);
        out
    }

    #[test]
    fn rewriting_digits_spells_the_new_value() {
        let cases = [
            (5, 50, 2),
            (50, 5, 2),
            (123_456, 123_999, 2),
            (-120, -999, 1),
            (99, 10, 0),
            (150, 149, 7),
            (1_000_000, 9_999_999, 3),
            (5, 7, 0),
            (15, 97, 0),
            (-5, -7, 0),
            (123, 456, 1),
            (1234, 1299, 3),
        ];
        for (old, new, dec) in cases {
            let mut buf = [0u8; 40];
            let i = write_fixed(&mut buf, 40, old, dec);
            let mut want = [0u8; 40];
            let j = write_fixed(&mut want, 40, new, dec);
            assert_eq!(i, j, "{old} {new}: not the same length");
            buf[i - 1] = b' ';
            rewrite_digits(&mut buf[i..], old, new, dec);
            assert_eq!(buf[i..], want[j..], "{old} -> {new} with {dec} decimals");
            assert_eq!(buf[i - 1], b' ', "{old} -> {new}: wrote before the value");
        }
    }

    /// Every host, every round, forwards, backwards and skipping: the
    /// patched page is the fresh render, injected anomalies included.
    #[test]
    fn patched_pages_are_the_rendered_bytes() {
        let f = fleet(150, 400, 12);
        assert!(!f.inj.is_empty());
        let order: Vec<u64> = (0..12).chain((0..12).rev()).chain([3, 9, 0, 11]).collect();
        for host in 0..150 {
            for &round in &order {
                let page = f.kept.page(&f, host, round);
                assert!(
                    page[..] == fresh(&f, host, round)[..],
                    "host {host} round {round}"
                );
            }
        }
    }

    /// Far ahead, counters need more digits: the values after them move,
    /// and the page is still the fresh render.
    #[test]
    fn values_that_grow_move_the_rest_of_the_page() {
        let f = fleet(300, 600, 5);
        let hosts: Vec<u32> = (0..300)
            .filter(|h| !f.inj.contains_key(h))
            .take(3)
            .collect();
        assert_eq!(hosts.len(), 3);
        for host in hosts {
            let mut k = Kept::default();
            k.render(&f, host, 1, &[], Vec::new());
            let before = k.text.len();
            for round in [40_000, 3_000_000, 2] {
                assert!(k.patch(&f, host, round, &[]), "host {host} round {round}");
                assert!(
                    k.text == fresh(&f, host, round),
                    "host {host} round {round}"
                );
                if round == 3_000_000 {
                    assert!(k.text.len() > before, "nothing grew");
                }
            }
        }
    }

    /// A page still lent to a response is never written over.
    #[test]
    fn a_lent_page_stays_as_it_was() {
        let f = fleet(2, 300, 5);
        let first = f.kept.page(&f, 1, 0);
        let second = f.kept.page(&f, 1, 1);
        assert_eq!(&first[..], &fresh(&f, 1, 0)[..]);
        assert_eq!(&second[..], &fresh(&f, 1, 1)[..]);
        drop(second);
        let third = f.kept.page(&f, 1, 2);
        assert_eq!(&first[..], &fresh(&f, 1, 0)[..]);
        assert_eq!(&third[..], &fresh(&f, 1, 2)[..]);
    }

    /// Only what can change is patched: constants are left alone.
    #[test]
    fn slots_are_the_changing_values_only() {
        let f = fleet(1, 2000, 3);
        let _ = f.kept.page(&f, 0, 0);
        let guard = f.kept.hosts[0].lock().unwrap();
        let kept = guard.as_ref().unwrap();
        let samples = f.series_count() - kept.omitted.len();
        assert!(kept.slots.len() < samples * 3 / 4, "{}", kept.slots.len());
        assert!(kept.slots.len() > samples / 4, "{}", kept.slots.len());
    }
}
