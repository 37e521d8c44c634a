//! Property tests of the wire layer: every value round-trips; the decoder answers arbitrary and
//! mutated frames with a value or an error — never a panic — within its nesting limit.

use muster_peer::wire::{
    Definition, ErrorKind, JsError, Limits, Packet, PacketType, StreamReference, Value, decode,
    decode_with_depth, encode,
};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z]{0,8}", ".{0,40}", "[a-zA-Z0-9]{30,300}"]
}

/// Values as they round-trip: integers as JavaScript holds them (within ±2^53) and floats that
/// are not whole numbers (a whole float is written as, and read back as, an integer).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Undefined),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-(1i64 << 53)..=(1i64 << 53)).prop_map(Value::Int),
        any::<f64>()
            .prop_filter("not whole, not NaN", |f| !f.is_nan() && f.fract() != 0.0)
            .prop_map(Value::Float),
        text().prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bin),
        any::<u64>().prop_map(Value::Date),
        "[0-9]{1,40}".prop_map(Value::BigInt),
        (any::<bool>(), any::<u64>()).prop_map(|(unsigned, bits)| Value::Long { unsigned, bits }),
        text().prop_map(Value::Reference),
        (any::<u32>(), any::<bool>(), any::<bool>(), text()).prop_map(
            |(stream_id, writable, live, peer_id)| {
                Value::StreamReference(Box::new(StreamReference { stream_id, writable, live, peer_id }))
            }
        ),
        (text(), text()).prop_map(|(source, flags)| Value::RegExp { source, flags }),
    ];
    leaf.prop_recursive(4, 64, 20, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..20).prop_map(Value::Array),
            proptest::collection::vec((text(), inner.clone()), 0..20).prop_map(Value::Object),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..8).prop_map(Value::Map),
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Set),
            (text(), text(), inner.clone()).prop_map(|(id, peer_id, meta)| {
                Value::Definition(Box::new(Definition { id, parent_id: String::new(), peer_id, meta }))
            }),
            (
                1u16..=7,
                text(),
                proptest::option::of(text()),
                text(),
                proptest::collection::vec((text(), inner), 0..4)
            )
                .prop_map(|(kind, name, stack, message, fields)| {
                    let fields = fields.into_iter().filter(|(_, v)| *v != Value::Undefined).collect();
                    let kind = ErrorKind::from_id(kind).unwrap();
                    Value::Error(Box::new(JsError { kind, name, stack, message, fields }))
                }),
        ]
    })
}

/// Integers written as float64 (beyond int32) come back as floats: compare as numbers.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Int(x), Value::Float(y)) | (Value::Float(y), Value::Int(x)) => (*x as f64) == *y,
        (Value::Array(x), Value::Array(y)) | (Value::Set(x), Value::Set(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((ka, a), (kb, b))| ka == kb && same(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((ka, a), (kb, b))| same(ka, kb) && same(a, b))
        }
        (Value::Definition(x), Value::Definition(y)) => {
            x.id == y.id && x.parent_id == y.parent_id && x.peer_id == y.peer_id && same(&x.meta, &y.meta)
        }
        (Value::Error(x), Value::Error(y)) => {
            x.kind == y.kind
                && x.name == y.name
                && x.stack == y.stack
                && x.message == y.message
                && x.fields.len() == y.fields.len()
                && x.fields.iter().zip(&y.fields).all(|((ka, a), (kb, b))| ka == kb && same(a, b))
        }
        _ => a == b,
    }
}

fn kind() -> impl Strategy<Value = PacketType> {
    prop_oneof![
        Just(PacketType::Get),
        Just(PacketType::Set),
        Just(PacketType::Call),
        Just(PacketType::Task),
        Just(PacketType::Stream),
        Just(PacketType::StreamError),
        Just(PacketType::StreamClose),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn values_round_trip(value in value()) {
        let mut bytes = Vec::new();
        encode(&value, &mut bytes).unwrap();
        let (back, used) = decode(&bytes).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert!(same(&value, &back), "{:?} came back as {:?}", value, back);
    }

    #[test]
    fn packets_round_trip(id in any::<u32>(), kind in kind(), flags in any::<(bool, bool, bool, bool)>(), data in value(), stream in any::<(u32, u32)>()) {
        let (impulse, error, eos, live) = flags;
        let packet = Packet { id, kind, impulse, error, eos, live, data, stream: (kind == PacketType::Stream).then_some(stream) };
        let back = Packet::decode(&packet.encode().unwrap(), Limits::default()).unwrap();
        prop_assert_eq!((back.id, back.kind, back.impulse, back.error, back.eos, back.live, back.stream), (id, kind, impulse, error, eos, live, packet.stream));
        prop_assert!(same(&packet.data, &back.data));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Packet::decode(&bytes, Limits::default());
        let _ = decode(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(data in value(), edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8)) {
        let mut bytes = Packet::request(1, PacketType::Call, data).encode().unwrap();
        for (at, byte, how) in edits {
            if bytes.is_empty() { break; }
            let at = at % bytes.len();
            match how {
                0 => bytes[at] = byte,
                1 => { bytes.truncate(at); }
                _ => bytes.insert(at, byte),
            }
        }
        let _ = Packet::decode(&bytes, Limits::default());
    }
}

#[test]
fn huge_announced_lengths_allocate_nothing_and_fail() {
    // An array32 of 4 billion items, a str32 and a bin32 of 4 GiB, a map ext of 4 billion entries: all
    // in a few bytes. Each fails as truncated without reserving what it announces.
    for bytes in [
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
        vec![0xc6, 0xff, 0xff, 0xff, 0xff],
        vec![0xc7, 0x04, 0x7c, 0xff, 0xff, 0xff, 0xff],
        vec![0xc9, 0xff, 0xff, 0xff, 0xff, 0x7c],
    ] {
        assert!(decode(&bytes).is_err(), "{bytes:02x?}");
    }
}

#[test]
fn nesting_is_limited() {
    let deep = [vec![0x91u8; 100], vec![0xc0]].concat();
    assert!(decode_with_depth(&deep, 64).is_err());
    assert!(decode_with_depth(&deep, 128).is_ok());
    // Nesting inside extensions counts too.
    let mut nested = vec![0xc0];
    for _ in 0..100 {
        let mut set = vec![0xc9];
        set.extend_from_slice(&((nested.len() + 4) as u32).to_be_bytes());
        set.push(0x7b);
        set.extend_from_slice(&1u32.to_be_bytes());
        set.extend_from_slice(&nested);
        nested = set;
    }
    assert!(decode(&nested).is_err());
}

#[test]
fn what_netron_cannot_read_is_refused() {
    for (bytes, what) in [
        (vec![0xc1], "c1"),
        (vec![0xdf, 0, 0, 0, 0], "map32"),
        (vec![0xd6, 0xff, 0, 0, 0, 0], "timestamp ext -1"),
        (vec![0xd4, 0x7a, 0x00], "reserved ext 122"),
        (vec![0xc7, 0x05, 0x7e, 0x00, 0x09, 0xa0, 0xc0, 0xa0], "error class 9"),
        (vec![0xa2, 0xff, 0xfe], "not UTF-8"),
        (vec![0x81, 0x90, 0x01], "an array as a key"),
    ] {
        assert!(decode(&bytes).is_err(), "{what}");
    }
    let mut out = Vec::new();
    let object = Value::Object((0..70_000).map(|i| (i.to_string(), Value::Null)).collect());
    assert!(encode(&object, &mut out).is_err(), "no map32 on the wire");
    assert!(Packet::decode(&[0, 0, 0, 1], Limits::default()).is_err(), "short");
    assert!(Packet::decode(&[0, 0, 0, 1, 0x0f, 0xc0], Limits::default()).is_err(), "type 15");
    assert!(
        Packet::decode(&[0, 0, 0, 1, 0x45, 0xc0, 0, 0], Limits::default()).is_err(),
        "stream without trailer"
    );
    let big = Limits { max_frame: 8, ..Limits::default() };
    assert!(Packet::decode(&[0u8; 9], big).is_err(), "over the frame limit");
}
