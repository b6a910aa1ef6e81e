//! Unit and property tests of the pure codec: every message round-trips,
//! truncated and random input is refused without panicking, and the frame
//! cap is enforced before anything is allocated.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::codec::Frame;
use super::*;

const ALL_STATUSES: [Status; 7] = [
    Status::Ok,
    Status::TaskError,
    Status::Panic,
    Status::Timeout,
    Status::EncodeFailed,
    Status::DecodeFailed,
    Status::UnknownTask,
];

/// An owned message to build frames from and compare decoded ones with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Setup {
        protocol: u32,
        fingerprint: u64,
        concurrency: u32,
        max_frame: u32,
        grace_us: u64,
        max_rss: u64,
        initializer: Option<(String, Vec<u8>)>,
    },
    Run {
        chunk: u64,
        task: String,
        timeout_us: u64,
        count: u32,
        payload: Vec<u8>,
    },
    Cancel(Vec<u64>),
    Shutdown,
    Cancelled,
    Ready {
        protocol: u32,
        fingerprint: u64,
        pid: u32,
        error: String,
    },
    Results(Vec<(u64, u32, Status, Vec<u8>)>),
    Retire(u64, Vec<(u64, u32)>),
}

impl Owned {
    fn write(&self, w: &mut FrameWriter) {
        match self {
            Owned::Setup {
                protocol,
                fingerprint,
                concurrency,
                max_frame,
                grace_us,
                max_rss,
                initializer,
            } => w.setup(&Setup {
                protocol: *protocol,
                fingerprint: *fingerprint,
                concurrency: *concurrency,
                max_frame: *max_frame,
                grace_us: *grace_us,
                max_rss: *max_rss,
                initializer: initializer
                    .as_ref()
                    .map(|(n, a)| (n.as_str(), a.as_slice())),
            }),
            Owned::Run {
                chunk,
                task,
                timeout_us,
                count,
                payload,
            } => w.run(&Run {
                chunk: *chunk,
                task,
                timeout_us: *timeout_us,
                count: *count,
                reducer: None,
                payload,
            }),
            Owned::Cancel(ids) => w.cancel(ids),
            Owned::Shutdown => w.shutdown(),
            Owned::Cancelled => w.cancelled(),
            Owned::Ready {
                protocol,
                fingerprint,
                pid,
                error,
            } => w.ready(&Ready {
                protocol: *protocol,
                fingerprint: *fingerprint,
                pid: *pid,
                error,
            }),
            Owned::Results(outcomes) => {
                let start = w.results_begin();
                for (chunk, index, status, data) in outcomes {
                    w.outcome(&Outcome {
                        chunk: *chunk,
                        index: *index,
                        status: *status,
                        data,
                    });
                }
                w.finish(start);
            }
            Owned::Retire(rss, returned) => w.retire(*rss, returned),
        }
    }

    fn from_message(m: &Message<'_>) -> Owned {
        match m {
            Message::Setup(s) => Owned::Setup {
                protocol: s.protocol,
                fingerprint: s.fingerprint,
                concurrency: s.concurrency,
                max_frame: s.max_frame,
                grace_us: s.grace_us,
                max_rss: s.max_rss,
                initializer: s.initializer.map(|(n, a)| (n.to_owned(), a.to_vec())),
            },
            Message::Run(r) => Owned::Run {
                chunk: r.chunk,
                task: r.task.to_owned(),
                timeout_us: r.timeout_us,
                count: r.count,
                payload: r.payload.to_vec(),
            },
            Message::Cancel(ids) => Owned::Cancel(ids.clone()),
            Message::Shutdown => Owned::Shutdown,
            Message::Cancelled => Owned::Cancelled,
            Message::Ready(r) => Owned::Ready {
                protocol: r.protocol,
                fingerprint: r.fingerprint,
                pid: r.pid,
                error: r.error.to_owned(),
            },
            Message::Results(results) => Owned::Results(
                results
                    .iter()
                    .map(|o| {
                        let o = o.expect("a well-formed outcome");
                        (o.chunk, o.index, o.status, o.data.to_vec())
                    })
                    .collect(),
            ),
            Message::Retire(r) => Owned::Retire(r.rss, r.returned.clone()),
        }
    }
}

/// One example of every message kind (and the variants of each).
fn examples() -> Vec<Owned> {
    vec![
        Owned::Setup {
            protocol: PROTOCOL_VERSION,
            fingerprint: 0xdead_beef_cafe_f00d,
            concurrency: 16,
            max_frame: 64 << 20,
            grace_us: 2_000_000,
            max_rss: 0,
            initializer: None,
        },
        Owned::Setup {
            protocol: u32::MAX,
            fingerprint: u64::MAX,
            concurrency: u32::MAX,
            max_frame: u32::MAX,
            grace_us: u64::MAX,
            max_rss: u64::MAX,
            initializer: Some(("my_crate::init".into(), vec![1, 2, 3, 0, 255])),
        },
        Owned::Setup {
            protocol: 0,
            fingerprint: 0,
            concurrency: 0,
            max_frame: 0,
            grace_us: 0,
            max_rss: 1,
            initializer: Some((String::new(), vec![])),
        },
        Owned::Run {
            chunk: 1,
            task: "tests::inc".into(),
            timeout_us: 0,
            count: 3,
            payload: vec![1, 2, 3],
        },
        Owned::Run {
            chunk: u64::MAX,
            task: "ünïcödé::task".into(),
            timeout_us: u64::MAX,
            count: u32::MAX,
            payload: vec![],
        },
        Owned::Run {
            chunk: 0,
            task: String::new(),
            timeout_us: 1,
            count: 0,
            payload: vec![0; 1000],
        },
        Owned::Cancel(vec![]),
        Owned::Cancel(vec![1]),
        Owned::Cancel(vec![0, 1, 127, 128, 16_383, 16_384, u64::MAX]),
        Owned::Shutdown,
        Owned::Cancelled,
        Owned::Ready {
            protocol: PROTOCOL_VERSION,
            fingerprint: 42,
            pid: 1234,
            error: String::new(),
        },
        Owned::Ready {
            protocol: 7,
            fingerprint: u64::MAX,
            pid: u32::MAX,
            error: "the initializer failed: ✗".into(),
        },
        Owned::Results(vec![]),
        Owned::Results(
            ALL_STATUSES
                .iter()
                .enumerate()
                .map(|(i, &s)| (i as u64 * 1000, i as u32, s, vec![i as u8; i * 3]))
                .collect(),
        ),
        Owned::Results(vec![(u64::MAX, u32::MAX, Status::Ok, vec![0xff; 300])]),
        Owned::Retire(0, Vec::new()),
        Owned::Retire(u64::MAX, vec![(u64::MAX, u32::MAX), (7, 0)]),
    ]
}

/// Splits `buf` into frames with `check_frame` and decodes each.
fn decode_all(buf: &[u8], max: usize) -> Vec<Owned> {
    let mut rest = buf;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let frame = check_frame(rest, max).unwrap().expect("a complete frame");
        let body = frame.body(rest);
        assert_eq!(body.len() + 4, frame.len);
        out.push(Owned::from_message(&Message::decode(body).unwrap()));
        rest = &rest[frame.len..];
    }
    out
}

fn encode(m: &Owned) -> Vec<u8> {
    let mut w = FrameWriter::new();
    m.write(&mut w);
    w.take()
}

// ------------------------------------------------------------ round trips

#[test]
fn every_message_kind_round_trips() {
    for m in examples() {
        let bytes = encode(&m);
        assert_eq!(
            decode_all(&bytes, DEFAULT_MAX_FRAME),
            vec![m.clone()],
            "{m:?}"
        );
    }
}

#[test]
fn back_to_back_frames_round_trip() {
    let mut w = FrameWriter::new();
    assert!(w.is_empty());
    for m in examples() {
        m.write(&mut w);
    }
    assert!(!w.is_empty());
    let len = w.len();
    let bytes = w.take();
    assert_eq!(bytes.len(), len);
    assert!(w.is_empty());
    assert_eq!(decode_all(&bytes, DEFAULT_MAX_FRAME), examples());
}

#[test]
fn frames_fed_one_byte_at_a_time_decode_the_same() {
    let mut w = FrameWriter::new();
    for m in examples() {
        m.write(&mut w);
    }
    let bytes = w.take();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for &b in &bytes {
        buf.push(b);
        while let Some(f) = check_frame(&buf, DEFAULT_MAX_FRAME).unwrap() {
            got.push(Owned::from_message(&Message::decode(f.body(&buf)).unwrap()));
            buf.drain(..f.len);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(got, examples());
}

#[test]
fn outcome_header_and_patching_build_the_same_frame_as_outcome() {
    let mut a = FrameWriter::new();
    let start = a.results_begin();
    a.outcome(&Outcome {
        chunk: 9,
        index: 2,
        status: Status::EncodeFailed,
        data: b"why",
    });
    a.finish(start);

    let mut b = FrameWriter::new();
    let start = b.results_begin();
    let at = b.outcome_header(9, 2, Status::Ok);
    b.buf().extend_from_slice(b"why");
    b.outcome_set_status(at, Status::EncodeFailed);
    b.outcome_end(at);
    assert_eq!(b.body_len(start), a.len() - 4);
    b.finish(start);
    assert_eq!(a.take(), b.take());
}

#[test]
fn run_header_then_payload_equals_run() {
    let mut a = FrameWriter::new();
    a.run(&Run {
        chunk: 5,
        task: "t",
        timeout_us: 10,
        count: 2,
        reducer: None,
        payload: b"xy",
    });
    let mut b = FrameWriter::new();
    let start = b.run_header(5, "t", 10, 2, None);
    b.buf().extend_from_slice(b"xy");
    b.finish(start);
    assert_eq!(a.take(), b.take());
}

#[test]
fn swap_keeps_both_buffers() {
    let mut w = FrameWriter::new();
    w.shutdown();
    let mut other = Vec::new();
    w.swap(&mut other);
    assert!(w.is_empty());
    assert_eq!(decode_all(&other, 1024), vec![Owned::Shutdown]);
}

#[test]
fn panic_payload_round_trips() {
    for (message, location) in [
        ("boom", Some("src/lib.rs:1:2")),
        ("", None),
        ("ünïcödé 💥", Some("")),
        ("a much longer message ".repeat(100).as_str(), None),
    ] {
        let mut buf = Vec::new();
        encode_panic(&mut buf, message, location);
        assert_eq!(decode_panic(&buf).unwrap(), (message, location));
    }
}

#[test]
fn status_from_u8_accepts_exactly_the_statuses() {
    for b in 0..=255u8 {
        match Status::from_u8(b) {
            Ok(s) => {
                assert!(b <= 7);
                assert_eq!(s as u8, b);
            }
            Err(e) => {
                assert!(b > 7);
                assert_eq!(e, WireError::BadValue("status", u64::from(b)));
            }
        }
    }
    for s in ALL_STATUSES {
        assert_eq!(Status::from_u8(s as u8), Ok(s));
    }
}

#[test]
fn append_value_round_trips_and_undoes_a_failed_value() {
    struct HalfWritten;
    impl serde::Serialize for HalfWritten {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{Error as _, SerializeTuple as _};
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&0xabcd_u64)?;
            t.serialize_element("half of it")?;
            Err(S::Error::custom("refused"))
        }
    }
    let mut buf = vec![7, 7, 7];
    append_value(&mut buf, &(1u64, "two".to_owned(), vec![3u8])).unwrap();
    assert!(append_value(&mut buf, &HalfWritten).is_err());
    append_value(&mut buf, &u64::MAX).unwrap();
    assert_eq!(&buf[..3], &[7, 7, 7]);
    let (v, rest): ((u64, String, Vec<u8>), _) = postcard::take_from_bytes(&buf[3..]).unwrap();
    assert_eq!(v, (1, "two".to_owned(), vec![3]));
    let (m, rest): (u64, _) = postcard::take_from_bytes(rest).unwrap();
    assert_eq!(m, u64::MAX);
    assert!(rest.is_empty());
}

// ------------------------------------------------------------ refusing bad input

#[test]
fn truncated_frames_at_every_length_are_incomplete_or_errors() {
    for m in examples() {
        let bytes = encode(&m);
        for cut in 0..bytes.len() {
            let head = &bytes[..cut];
            assert_eq!(
                check_frame(head, DEFAULT_MAX_FRAME),
                Ok(None),
                "{m:?} cut at {cut}"
            );
        }
        // A body cut short either fails to decode or, for the messages
        // whose last field is "the rest" (RUN payload, RESULTS), decodes to
        // less than was sent; it never panics.
        let body = &bytes[4..];
        for cut in 0..body.len() {
            match Message::decode(&body[..cut]) {
                Err(_) => {}
                Ok(Message::Run(r)) => {
                    assert!(
                        matches!(m, Owned::Run { .. }),
                        "{m:?} cut at {cut} decoded as RUN"
                    );
                    assert!(r.payload.len() < body.len());
                }
                Ok(Message::Results(results)) => {
                    let Owned::Results(sent) = &m else {
                        panic!("{m:?} cut at {cut} decoded as RESULTS")
                    };
                    let decoded: Vec<_> = results.iter().collect();
                    let complete = decoded.iter().filter(|o| o.is_ok()).count();
                    assert!(complete <= sent.len());
                    // The last entry of a cut frame is incomplete unless
                    // the cut fell between two outcomes.
                    if let Some(Err(e)) = decoded.last() {
                        assert_eq!(*e, WireError::Truncated);
                    }
                }
                Ok(other) => panic!("{m:?} cut at {cut} decoded as {other:?}"),
            }
        }
    }
}

#[test]
fn truncated_fixed_layout_messages_are_errors() {
    for m in examples() {
        if matches!(
            m,
            Owned::Run { .. } | Owned::Results(_) | Owned::Shutdown | Owned::Cancelled
        ) {
            continue;
        }
        let bytes = encode(&m);
        let body = &bytes[4..];
        for cut in 0..body.len() {
            assert!(Message::decode(&body[..cut]).is_err(), "{m:?} cut at {cut}");
        }
    }
}

#[test]
fn empty_frame_body_is_refused() {
    assert_eq!(check_frame(&[0, 0, 0, 0], 1024), Err(WireError::Truncated));
    assert_eq!(Message::decode(&[]), Err(WireError::Truncated));
}

#[test]
fn trailing_bytes_are_refused() {
    for m in examples() {
        if matches!(m, Owned::Run { .. } | Owned::Results(_)) {
            continue;
        }
        let mut body = encode(&m)[4..].to_vec();
        body.push(0);
        assert_eq!(Message::decode(&body), Err(WireError::Trailing(1)), "{m:?}");
    }
}

#[test]
fn unknown_tags_and_flags_are_refused() {
    for t in 0..=255u8 {
        let known = [
            tag::SETUP,
            tag::RUN,
            tag::CANCEL,
            tag::SHUTDOWN,
            tag::READY,
            tag::RESULTS,
            tag::RETIRE,
            tag::CANCELLED,
        ];
        if !known.contains(&t) {
            assert_eq!(
                Message::decode(&[t]),
                Err(WireError::BadValue("message tag", u64::from(t)))
            );
        }
    }
    // SETUP with initializer flag 2.
    let mut body = vec![tag::SETUP];
    for v in [1u64, 2, 3, 4, 5, 6] {
        put_varint(&mut body, v);
    }
    body.push(2);
    assert_eq!(
        Message::decode(&body),
        Err(WireError::BadValue("initializer flag", 2))
    );
}

#[test]
fn bad_utf8_is_refused() {
    let mut body = vec![tag::READY];
    put_varint(&mut body, 1);
    put_varint(&mut body, 2);
    put_varint(&mut body, 3);
    put_bytes(&mut body, &[0xff, 0xfe]);
    assert_eq!(Message::decode(&body), Err(WireError::BadUtf8));
    let mut run = vec![tag::RUN];
    put_varint(&mut run, 1);
    put_bytes(&mut run, &[0xc0]);
    put_varint(&mut run, 0);
    put_varint(&mut run, 1);
    assert_eq!(Message::decode(&run), Err(WireError::BadUtf8));
}

#[test]
fn oversized_u32_fields_are_refused() {
    let mut body = vec![tag::READY];
    put_varint(&mut body, u64::from(u32::MAX) + 1);
    assert_eq!(Message::decode(&body), Err(WireError::VarintOverflow));
    let mut results = Vec::new();
    put_varint(&mut results, 1);
    put_varint(&mut results, u64::from(u32::MAX) + 1);
    let r = Results { body: &results };
    let all: Vec<_> = r.iter().collect();
    assert_eq!(all, vec![Err(WireError::VarintOverflow)]);
}

#[test]
fn results_iterator_stops_after_a_bad_entry() {
    let mut w = FrameWriter::new();
    let start = w.results_begin();
    w.outcome(&Outcome {
        chunk: 1,
        index: 0,
        status: Status::Ok,
        data: b"a",
    });
    // A group with a bad status byte, then what would be a valid outcome.
    put_varint(w.buf(), 1);
    put_varint(w.buf(), 1);
    w.buf().extend_from_slice(&1u32.to_le_bytes()); // count
    w.buf().extend_from_slice(&2u32.to_le_bytes()); // body length
    w.buf().push(99);
    w.buf().push(0);
    w.outcome(&Outcome {
        chunk: 1,
        index: 2,
        status: Status::Ok,
        data: b"c",
    });
    w.finish(start);
    let bytes = w.take();
    let Message::Results(results) = Message::decode(&bytes[4..]).unwrap() else {
        panic!("not RESULTS")
    };
    let all: Vec<_> = results.iter().collect();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].as_ref().unwrap().data, b"a");
    assert_eq!(all[1], Err(WireError::BadValue("status", 99)));
}

#[test]
fn outcome_data_longer_than_the_frame_is_refused() {
    let mut body = Vec::new();
    put_varint(&mut body, 1); // chunk
    put_varint(&mut body, 0); // first index
    body.extend_from_slice(&1u32.to_le_bytes()); // count
    body.extend_from_slice(&11u32.to_le_bytes()); // body length
    body.push(Status::Ok as u8);
    put_varint(&mut body, u64::from(u32::MAX)); // data length
    body.extend_from_slice(b"short");
    let all: Vec<_> = Results { body: &body }.iter().collect();
    assert_eq!(all, vec![Err(WireError::Truncated)]);
}

#[test]
fn frame_over_the_cap_is_refused_from_its_prefix_alone() {
    // Only the four prefix bytes are there: the answer must not be "need
    // more bytes", which would make a reader buffer up to 4 GiB.
    assert_eq!(
        check_frame(&u32::MAX.to_le_bytes(), 1024),
        Err(WireError::TooLarge {
            len: u32::MAX as usize,
            max: 1024
        })
    );
    assert_eq!(
        check_frame(
            &(DEFAULT_MAX_FRAME as u32 + 1).to_le_bytes(),
            DEFAULT_MAX_FRAME
        ),
        Err(WireError::TooLarge {
            len: DEFAULT_MAX_FRAME + 1,
            max: DEFAULT_MAX_FRAME
        })
    );
    // Exactly the cap is allowed (and incomplete here).
    assert_eq!(check_frame(&1024u32.to_le_bytes(), 1024), Ok(None));
    assert_eq!(
        check_frame(&1025u32.to_le_bytes(), 1024),
        Err(WireError::TooLarge {
            len: 1025,
            max: 1024
        })
    );
    let mut full = 1024u32.to_le_bytes().to_vec();
    full.resize(4 + 1024, tag::SHUTDOWN);
    assert_eq!(check_frame(&full, 1024), Ok(Some(Frame { len: 1028 })));
}

#[test]
fn cancel_with_a_lying_count_is_refused_before_allocating() {
    for n in [u64::MAX, u64::from(u32::MAX), 1 << 40, 3] {
        let mut body = vec![tag::CANCEL];
        put_varint(&mut body, n);
        body.extend_from_slice(&[1, 2]);
        assert_eq!(
            Message::decode(&body),
            Err(WireError::Truncated),
            "count {n}"
        );
    }
}

#[test]
fn byte_string_with_a_huge_length_is_refused() {
    let mut buf = Vec::new();
    put_varint(&mut buf, u64::MAX);
    buf.extend_from_slice(b"abc");
    assert_eq!(Reader::new(&buf).bytes(), Err(WireError::Truncated));
    assert_eq!(Reader::new(&buf).str(), Err(WireError::Truncated));
    let mut panic_data = Vec::new();
    put_varint(&mut panic_data, u64::MAX);
    assert!(decode_panic(&panic_data).is_err());
}

// ------------------------------------------------------------ varints

fn varint_bytes(v: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    put_varint(&mut buf, v);
    buf
}

#[test]
fn varint_edge_values_round_trip_with_minimal_length() {
    let mut values = vec![
        0u64,
        1,
        u64::MAX,
        u64::MAX - 1,
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
    ];
    for k in 1..64 {
        values.extend([(1u64 << k) - 1, 1u64 << k, (1u64 << k) + 1]);
    }
    for v in values {
        let bytes = varint_bytes(v);
        let bits = 64 - v.leading_zeros() as usize;
        assert_eq!(bytes.len(), bits.div_ceil(7).max(1), "length of {v}");
        let mut r = Reader::new(&bytes);
        assert_eq!(r.varint(), Ok(v));
        assert!(r.is_empty());
    }
    assert_eq!(
        varint_bytes(u64::MAX),
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
    );
    assert_eq!(
        varint_bytes(1 << 63),
        [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]
    );
}

#[test]
fn varint_overflow_at_ten_bytes() {
    // The tenth byte may only carry the top bit of a u64.
    for last in 2..=0x7fu8 {
        let mut bytes = vec![0xff; 9];
        bytes.push(last);
        assert_eq!(
            Reader::new(&bytes).varint(),
            Err(WireError::VarintOverflow),
            "tenth byte {last:#x}"
        );
    }
    // A tenth byte that asks for an eleventh.
    let mut bytes = vec![0x80; 9];
    bytes.push(0x81);
    bytes.push(0x00);
    assert_eq!(Reader::new(&bytes).varint(), Err(WireError::VarintOverflow));
    // Endless continuation bytes stop at ten.
    assert_eq!(
        Reader::new(&[0x80; 64]).varint(),
        Err(WireError::VarintOverflow)
    );
    assert_eq!(
        Reader::new(&[0xff; 11]).varint(),
        Err(WireError::VarintOverflow)
    );
}

#[test]
fn varint_non_minimal_encodings_decode_to_their_value() {
    assert_eq!(Reader::new(&[0x80, 0x00]).varint(), Ok(0));
    assert_eq!(Reader::new(&[0x81, 0x80, 0x00]).varint(), Ok(1));
    let mut padded = vec![0x80; 9];
    padded.push(0x00);
    assert_eq!(Reader::new(&padded).varint(), Ok(0));
}

#[test]
fn varint_truncated_is_an_error() {
    assert_eq!(Reader::new(&[]).varint(), Err(WireError::Truncated));
    for n in 1..10 {
        assert_eq!(
            Reader::new(&vec![0x80; n]).varint(),
            Err(WireError::Truncated),
            "{n} continuation bytes"
        );
    }
}

#[test]
fn varint_u32_bounds() {
    assert_eq!(
        Reader::new(&varint_bytes(u64::from(u32::MAX))).varint_u32(),
        Ok(u32::MAX)
    );
    assert_eq!(
        Reader::new(&varint_bytes(u64::from(u32::MAX) + 1)).varint_u32(),
        Err(WireError::VarintOverflow)
    );
    assert_eq!(
        Reader::new(&varint_bytes(u64::MAX)).varint_u32(),
        Err(WireError::VarintOverflow)
    );
}

#[test]
fn reader_primitives_are_bounds_checked() {
    let mut r = Reader::new(&[1, 2, 3]);
    assert_eq!(r.remaining(), 3);
    assert_eq!(r.u32_le(), Err(WireError::Truncated));
    assert_eq!(r.remaining(), 3, "a failed read consumes nothing");
    assert_eq!(r.take(4), Err(WireError::Truncated));
    assert_eq!(r.take(2), Ok(&[1u8, 2][..]));
    assert_eq!(r.u8(), Ok(3));
    assert_eq!(r.u8(), Err(WireError::Truncated));
    assert_eq!(r.take(0), Ok(&[][..]));
    assert!(r.is_empty());
    let mut r = Reader::new(&[4, 3, 2, 1, 9]);
    assert_eq!(r.u32_le(), Ok(0x0102_0304));
    assert_eq!(r.rest(), &[9]);
    assert_eq!(r.rest(), &[] as &[u8]);
}

#[test]
fn wire_errors_display() {
    for e in [
        WireError::Truncated,
        WireError::VarintOverflow,
        WireError::TooLarge { len: 5, max: 4 },
        WireError::BadValue("status", 9),
        WireError::BadUtf8,
        WireError::Trailing(3),
    ] {
        assert!(!e.to_string().is_empty());
    }
}

// ------------------------------------------------------------ properties

fn any_status() -> impl Strategy<Value = Status> {
    proptest::sample::select(ALL_STATUSES.to_vec())
}

fn any_message() -> impl Strategy<Value = Owned> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (
            (any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>()),
            (any::<u64>(), any::<u64>()),
            proptest::option::of((".{0,20}", bytes()))
        )
            .prop_map(
                |(
                    (protocol, fingerprint, concurrency, max_frame),
                    (grace_us, max_rss),
                    initializer,
                )| {
                    Owned::Setup {
                        protocol,
                        fingerprint,
                        concurrency,
                        max_frame,
                        grace_us,
                        max_rss,
                        initializer,
                    }
                }
            ),
        (any::<u64>(), ".{0,40}", any::<u64>(), any::<u32>(), bytes()).prop_map(
            |(chunk, task, timeout_us, count, payload)| Owned::Run {
                chunk,
                task,
                timeout_us,
                count,
                payload
            }
        ),
        proptest::collection::vec(any::<u64>(), 0..20).prop_map(Owned::Cancel),
        Just(Owned::Shutdown),
        Just(Owned::Cancelled),
        (any::<u32>(), any::<u64>(), any::<u32>(), ".{0,40}").prop_map(
            |(protocol, fingerprint, pid, error)| Owned::Ready {
                protocol,
                fingerprint,
                pid,
                error
            }
        ),
        proptest::collection::vec((any::<u64>(), any::<u32>(), any_status(), bytes()), 0..10)
            .prop_map(Owned::Results),
        (
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), any::<u32>()), 0..5)
        )
            .prop_map(|(rss, returned)| Owned::Retire(rss, returned)),
    ]
}

/// Decodes everything decodable in `bytes`, as the parent and the worker
/// would; must never panic.
fn decode_everything(bytes: &[u8], max: usize) {
    let mut rest = bytes;
    while let Ok(Some(f)) = check_frame(rest, max) {
        assert!(f.len > 4 && f.len <= rest.len() && f.len - 4 <= max);
        if let Ok(Message::Results(results)) = Message::decode(f.body(rest)) {
            for o in results.iter().flatten() {
                let _ = decode_panic(o.data);
                assert!(o.data.len() < f.len);
            }
        }
        rest = &rest[f.len..];
    }
    let _ = Message::decode(bytes);
    let _ = Results { body: bytes }.iter().count();
    let _ = decode_panic(bytes);
    let mut r = Reader::new(bytes);
    while r.varint().is_ok() {}
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn prop_messages_round_trip(messages in proptest::collection::vec(any_message(), 1..8)) {
        let mut w = FrameWriter::new();
        for m in &messages {
            m.write(&mut w);
        }
        let bytes = w.take();
        prop_assert_eq!(decode_all(&bytes, DEFAULT_MAX_FRAME), messages);
    }

    #[test]
    fn prop_split_stream_decodes_the_same(
        messages in proptest::collection::vec(any_message(), 1..8),
        cuts in proptest::collection::vec(1usize..50, 1..40),
    ) {
        let mut w = FrameWriter::new();
        for m in &messages {
            m.write(&mut w);
        }
        let bytes = w.take();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut at = 0;
        let mut cuts = cuts.into_iter().cycle();
        while at < bytes.len() {
            let n = cuts.next().unwrap_or(1).min(bytes.len() - at);
            buf.extend_from_slice(&bytes[at..at + n]);
            at += n;
            while let Some(f) = check_frame(&buf, DEFAULT_MAX_FRAME).unwrap() {
                got.push(Owned::from_message(&Message::decode(f.body(&buf)).unwrap()));
                buf.drain(..f.len);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, messages);
    }

    #[test]
    fn prop_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..4096) {
        decode_everything(&bytes, max);
    }

    #[test]
    fn prop_random_bodies_after_a_valid_tag_never_panic(
        t in proptest::sample::select(vec![tag::SETUP, tag::RUN, tag::CANCEL, tag::SHUTDOWN, tag::READY, tag::RESULTS, tag::RETIRE, tag::CANCELLED]),
        rest in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut body = vec![t];
        body.extend_from_slice(&rest);
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        decode_everything(&frame, DEFAULT_MAX_FRAME);
        decode_everything(&body, DEFAULT_MAX_FRAME);
    }

    #[test]
    fn prop_mutated_frames_never_panic(
        m in any_message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = encode(&m);
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        decode_everything(&bytes, DEFAULT_MAX_FRAME);
    }

    #[test]
    fn prop_truncated_frames_are_incomplete(m in any_message(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&m);
        let cut = cut.index(bytes.len());
        prop_assert_eq!(check_frame(&bytes[..cut], DEFAULT_MAX_FRAME), Ok(None));
        let _ = Message::decode(&bytes[4..cut.max(4)]);
    }

    #[test]
    fn prop_varint_round_trips(v in any::<u64>()) {
        let bytes = varint_bytes(v);
        prop_assert!(bytes.len() <= 10);
        let mut r = Reader::new(&bytes);
        prop_assert_eq!(r.varint(), Ok(v));
        prop_assert!(r.is_empty());
        for cut in 0..bytes.len() {
            prop_assert_eq!(Reader::new(&bytes[..cut]).varint(), Err(WireError::Truncated));
        }
    }

    #[test]
    fn prop_panic_payload_round_trips(message in ".{0,100}", location in proptest::option::of(".{0,50}")) {
        let mut buf = Vec::new();
        encode_panic(&mut buf, &message, location.as_deref());
        prop_assert_eq!(decode_panic(&buf), Ok((message.as_str(), location.as_deref())));
    }
}

// ------------------------------------------------------------ fuzz entry point

/// The exact body proposed for `multiloop::__private::fuzz_decode` (which
/// the fuzz target in `fuzz/` calls), compiled here against the crate's
/// real paths so the proposal is known to build.
fn proposed_fuzz_decode(bytes: &[u8]) {
    use crate::wire::{DEFAULT_MAX_FRAME, Message, Status, check_frame, decode_panic};
    // As a stream of frames, the way both ends read their channel.
    let mut rest = bytes;
    while let Ok(Some(frame)) = check_frame(rest, DEFAULT_MAX_FRAME) {
        if let Ok(Message::Results(results)) = Message::decode(&rest[4..frame.len]) {
            for outcome in results.iter() {
                let Ok(outcome) = outcome else { break };
                if outcome.status == Status::Panic {
                    let _ = decode_panic(outcome.data);
                }
            }
        }
        rest = &rest[frame.len..];
    }
    // And as one frame body, so inputs need not start with a valid prefix.
    if let Ok(Message::Results(results)) = Message::decode(bytes) {
        for outcome in results.iter().flatten() {
            let _ = decode_panic(outcome.data);
        }
    }
}

#[test]
fn proposed_fuzz_decode_handles_valid_and_garbage_input() {
    let mut w = FrameWriter::new();
    for m in examples() {
        m.write(&mut w);
    }
    let bytes = w.take();
    proposed_fuzz_decode(&bytes);
    for cut in 0..bytes.len() {
        proposed_fuzz_decode(&bytes[..cut]);
        proposed_fuzz_decode(&bytes[cut..]);
    }
    proposed_fuzz_decode(&[0xff; 100]);
    proposed_fuzz_decode(&[]);
}

proptest! {
    #[test]
    fn prop_proposed_fuzz_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        proposed_fuzz_decode(&bytes);
    }
}

#[test]
fn a_group_whose_length_or_count_lies_is_refused() {
    // The body length runs past the frame.
    let mut body = Vec::new();
    put_varint(&mut body, 1); // chunk
    put_varint(&mut body, 0); // first index
    body.extend_from_slice(&1u32.to_le_bytes()); // count
    body.extend_from_slice(&100u32.to_le_bytes()); // body length
    body.extend_from_slice(&[Status::Ok as u8, 0]);
    let groups: Vec<_> = Results { body: &body }.groups().collect();
    assert_eq!(groups, vec![Err(WireError::Truncated)]);
    // More outcomes than the body could hold (each takes two bytes).
    let mut body = Vec::new();
    put_varint(&mut body, 1);
    put_varint(&mut body, 0);
    body.extend_from_slice(&5u32.to_le_bytes());
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&[Status::Ok as u8, 0]);
    let groups: Vec<_> = Results { body: &body }.groups().collect();
    assert_eq!(groups, vec![Err(WireError::BadValue("outcome count", 5))]);
    // A body with fewer outcomes than its count: the outcome reader says so.
    let mut body = Vec::new();
    put_varint(&mut body, 1);
    put_varint(&mut body, 0);
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&4u32.to_le_bytes());
    body.extend_from_slice(&[Status::Ok as u8, 2, 7, 7]);
    let all: Vec<_> = Results { body: &body }.iter().collect();
    assert_eq!(all.len(), 2);
    assert!(all[0].is_ok());
    assert_eq!(all[1], Err(WireError::Truncated));
}

#[test]
fn consecutive_outcomes_share_a_group_whose_length_covers_them() {
    let mut w = FrameWriter::new();
    let start = w.results_begin();
    for (index, data) in [(3u32, &b"x"[..]), (4, &[9u8; 200][..]), (5, &b""[..])] {
        w.outcome(&Outcome {
            chunk: 7,
            index,
            status: Status::Ok,
            data,
        });
    }
    w.finish(start);
    let bytes = w.take();
    let Message::Results(results) = Message::decode(&bytes[4..]).unwrap() else {
        panic!("not RESULTS")
    };
    let groups: Vec<_> = results.groups().collect::<Result<_, _>>().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (groups[0].chunk, groups[0].first, groups[0].count),
        (7, 3, 3)
    );
    // status + 1-byte length + 1, status + 2-byte length + 200, status + length.
    assert_eq!(groups[0].body.len(), 3 + 203 + 2);
    let data: Vec<_> = results.iter().map(|o| o.unwrap().data.len()).collect();
    assert_eq!(data, vec![1, 200, 0]);
}

#[test]
fn successes_share_a_dense_group_of_values_alone() {
    let mut w = FrameWriter::new();
    let start = w.results_begin();
    for (index, value) in [(0u32, 5u64), (1, 300), (2, 7)] {
        w.value_header(9, index);
        append_value(w.buf(), &value).unwrap();
        w.value_end();
    }
    // A failure does not join the dense group; the next value starts one.
    let at = w.outcome_header(9, 3, Status::TaskError);
    w.buf().extend_from_slice(b"e");
    w.outcome_end(at);
    let mark = w.mark();
    w.value_header(9, 4);
    append_value(w.buf(), &1u64).unwrap();
    w.value_end();
    // Rolled back: the group of index 4 disappears entirely.
    w.rollback(mark);
    w.value_header(9, 4);
    append_value(w.buf(), &8u64).unwrap();
    w.value_end();
    w.finish(start);
    let bytes = w.take();
    let Message::Results(results) = Message::decode(&bytes[4..]).unwrap() else {
        panic!("not RESULTS")
    };
    let groups: Vec<_> = results.groups().collect::<Result<_, _>>().unwrap();
    let shape: Vec<_> = groups.iter().map(|g| (g.first, g.count, g.dense)).collect();
    assert_eq!(shape, vec![(0, 3, true), (3, 1, false), (4, 1, true)]);
    let mut values = groups[0].body;
    let mut decoded = Vec::new();
    for _ in 0..3 {
        let (v, rest) = postcard::take_from_bytes::<u64>(values).unwrap();
        decoded.push(v);
        values = rest;
    }
    assert_eq!((decoded, values.len()), (vec![5, 300, 7], 0));
    // One by one, a dense group of several values cannot be split.
    let all: Vec<_> = results.iter().collect();
    assert_eq!(
        all,
        vec![Err(WireError::BadValue("dense group read one by one", 3))]
    );
}
