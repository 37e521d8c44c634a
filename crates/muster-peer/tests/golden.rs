//! Golden bytes: every packet kind as Netron writes it (the worked examples of
//! `NETRON-PROTOCOL.md` §10, checked by hand against the dialect), encoded to exactly these bytes and
//! decoded back to the same packet.

use muster_peer::wire::{
    Definition, ErrorKind, JsError, Limits, Packet, PacketIds, PacketType, StreamReference, Value,
};

/// Bytes from a hex dump (white space ignored).
fn hex(text: &str) -> Vec<u8> {
    let digits: String = text.split_whitespace().collect();
    (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap()).collect()
}

/// Bytes of `text` as a quoted string would appear in a dump.
fn ascii(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x} ")).collect()
}

fn check(packet: &Packet, bytes: &[u8]) {
    assert_eq!(packet.encode().unwrap(), bytes, "encoding of {packet:?}");
    assert_eq!(&Packet::decode(bytes, Limits::default()).unwrap(), packet, "decoding");
}

const SERVER: &str = "0f9e8d7c-6b5a-4c3d-8e1f-a0b1c2d3e4f5";
const DEF: &str = "b3c1f6a2-5d4e-4f7a-9c8b-1e2d3f4a5b6c";

fn calculator_meta() -> Value {
    Value::object([
        ("name", Value::str("calculator")),
        ("version", Value::str("1.0.0")),
        ("properties", Value::Object(Vec::new())),
        (
            "methods",
            Value::object([(
                "add",
                Value::object([
                    ("type", Value::str("Number")),
                    ("arguments", Value::Array(vec![Value::str("Number"), Value::str("Number")])),
                ]),
            )]),
        ),
    ])
}

#[test]
fn abilities_request() {
    let packet = Packet::request(
        1,
        PacketType::Task,
        Value::Array(vec![
            Value::str("abilities"),
            Value::object([("allowServiceEvents", Value::Bool(false))]),
        ]),
    );
    let bytes =
        hex("00 00 00 01 44 92 a9 61 62 69 6c 69 74 69 65 73 81 b2 61 6c 6c 6f 77 53 65 72 76 69 63 65
         45 76 65 6e 74 73 c2");
    assert_eq!(bytes.len(), 37);
    check(&packet, &bytes);
}

#[test]
fn abilities_response_with_a_definition_in_a_map() {
    let definition = Definition {
        id: DEF.into(),
        parent_id: String::new(),
        peer_id: SERVER.into(),
        meta: calculator_meta(),
    };
    let request = Packet::request(1, PacketType::Task, Value::Null);
    let response = request.response(Ok(Value::object([
        (
            "services",
            Value::Map(vec![(Value::str("calculator@1.0.0"), Value::Definition(Box::new(definition)))]),
        ),
        ("allowServiceEvents", Value::Bool(false)),
    ])));
    let bytes =
        hex("00 00 00 01 04 82 a8 73 65 72 76 69 63 65 73 c7 c3 7c 00 00 00 01 b0 63 61 6c 63 75 6c 61
         74 6f 72 40 31 2e 30 2e 30 c7 ab 6d d9 24 62 33 63 31 66 36 61 32 2d 35 64 34 65 2d 34 66
         37 61 2d 39 63 38 62 2d 31 65 32 64 33 66 34 61 35 62 36 63 a0 d9 24 30 66 39 65 38 64 37
         63 2d 36 62 35 61 2d 34 63 33 64 2d 38 65 31 66 2d 61 30 62 31 63 32 64 33 65 34 66 35 84
         a4 6e 61 6d 65 aa 63 61 6c 63 75 6c 61 74 6f 72 a7 76 65 72 73 69 6f 6e a5 31 2e 30 2e 30
         aa 70 72 6f 70 65 72 74 69 65 73 80 a7 6d 65 74 68 6f 64 73 81 a3 61 64 64 82 a4 74 79 70
         65 a6 4e 75 6d 62 65 72 a9 61 72 67 75 6d 65 6e 74 73 92 a6 4e 75 6d 62 65 72 a6 4e 75 6d
         62 65 72 b2 61 6c 6c 6f 77 53 65 72 76 69 63 65 45 76 65 6e 74 73 c2");
    assert_eq!(bytes.len(), 233);
    check(&response, &bytes);
}

#[test]
fn call_and_its_result() {
    let call = Packet::request(
        2,
        PacketType::Call,
        Value::Array(vec![Value::str(DEF), Value::str("add"), Value::Int(5), Value::Int(3)]),
    );
    let bytes = hex(&format!("00 00 00 02 43 94 d9 24 {} a3 61 64 64 05 03", ascii(DEF)));
    assert_eq!(bytes.len(), 50);
    check(&call, &bytes);
    check(&call.response(Ok(Value::Int(8))), &hex("00 00 00 02 03 08"));
    // A JavaScript number 8 and the integer 8 are the same bytes.
    assert_eq!(call.response(Ok(Value::Float(8.0))).encode().unwrap(), hex("00 00 00 02 03 08"));
}

#[test]
fn error_reply() {
    let call = Packet::request(2, PacketType::Call, Value::Null);
    let reply = call.response(Err(Value::Error(Box::new(JsError::new("boom")))));
    check(&reply, &hex("00 00 00 02 83 c7 12 7e 00 01 a5 45 72 72 6f 72 d4 00 00 a4 62 6f 6f 6d 00 00"));
    // A TypeError with a stack and a custom field.
    let error = JsError {
        kind: ErrorKind::TypeError,
        name: "TypeError".into(),
        stack: Some("at x".into()),
        message: "bad".into(),
        fields: vec![("code".into(), Value::Int(7)), ("skipped".into(), Value::Undefined)],
    };
    let bytes = call.response(Err(Value::Error(Box::new(error.clone())))).encode().unwrap();
    let decoded = Packet::decode(&bytes, Limits::default()).unwrap();
    let Value::Error(back) = decoded.data else { panic!("{decoded:?}") };
    assert_eq!(back.fields, vec![("code".to_owned(), Value::Int(7))], "undefined fields are not sent");
    assert_eq!(
        (back.kind, back.stack.as_deref(), back.message.as_str()),
        (ErrorKind::TypeError, Some("at x"), "bad")
    );
}

#[test]
fn void_get_and_set() {
    let set = Packet::request(
        4,
        PacketType::Set,
        Value::Array(vec![Value::str("d"), Value::str("p"), Value::Int(1)]),
    );
    check(&set, &hex("00 00 00 04 42 93 a1 64 a1 70 01"));
    check(&set.response(Ok(Value::Undefined)), &hex("00 00 00 04 02 d4 00 00"));
    let get = Packet::request(5, PacketType::Get, Value::Array(vec![Value::str("d"), Value::str("p")]));
    check(&get, &hex("00 00 00 05 41 92 a1 64 a1 70"));
}

#[test]
fn subscribe_task() {
    let packet = Packet::request(
        2,
        PacketType::Task,
        Value::Array(vec![Value::str("subscribe"), Value::str("service:expose")]),
    );
    check(
        &packet,
        &hex(&format!("00 00 00 02 44 92 a9 {} ae {}", ascii("subscribe"), ascii("service:expose"))),
    );
}

#[test]
fn references() {
    let reference = Packet::request(3, PacketType::Call, Value::Reference(DEF.into()));
    check(&reference, &hex(&format!("00 00 00 03 43 c7 26 6c d9 24 {}", ascii(DEF))));
    let reply = Packet::request(3, PacketType::Call, Value::Null).response(Ok(Value::StreamReference(
        Box::new(StreamReference { stream_id: 1, writable: true, live: true, peer_id: SERVER.into() }),
    )));
    check(&reply, &hex(&format!("00 00 00 03 03 c7 2a 6b a1 31 01 01 d9 24 {}", ascii(SERVER))));
}

#[test]
fn stream_chunks_and_their_end() {
    check(
        &Packet::chunk(7, 1, 0, Value::Int(42), true, false),
        &hex("00 00 00 07 65 2a 00 00 00 01 00 00 00 00"),
    );
    check(
        &Packet::chunk(9, 1, 2, Value::Null, true, true),
        &hex("00 00 00 09 75 c0 00 00 00 01 00 00 00 02"),
    );
    check(
        &Packet::chunk(8, 3, 1, Value::str("x"), false, false),
        &hex("00 00 00 08 45 a1 78 00 00 00 03 00 00 00 01"),
    );
    let stream_error = Packet::request(
        10,
        PacketType::StreamError,
        Value::object([("streamId", Value::Int(1)), ("message", Value::str("x"))]),
    );
    check(
        &stream_error,
        &hex(&format!("00 00 00 0a 46 82 a8 {} 01 a7 {} a1 78", ascii("streamId"), ascii("message"))),
    );
    let close = Packet::request(11, PacketType::StreamClose, Value::object([("streamId", Value::Int(1))]));
    assert_eq!(close.encode().unwrap()[4], 0x47);
}

#[test]
fn common_extension_types() {
    let cases: Vec<(Value, &str)> = vec![
        (Value::Date(1_700_000_000_000), "d7 7d 00 00 01 8b cf e5 68 00"),
        (Value::BigInt("5".into()), "d5 78 a1 35"),
        (Value::Set(vec![Value::Int(1)]), "c7 05 7b 00 00 00 01 01"),
        (Value::Map(vec![(Value::Int(1), Value::str("a"))]), "c7 07 7c 00 00 00 01 01 a1 61"),
        (Value::RegExp { source: "a+".into(), flags: "g".into() }, "c7 05 79 a2 61 2b a1 67"),
        (Value::Long { unsigned: true, bits: 1 }, "c7 09 77 01 00 00 00 00 00 00 00 01"),
    ];
    for (value, bytes) in cases {
        let mut out = Vec::new();
        muster_peer::wire::encode(&value, &mut out).unwrap();
        assert_eq!(out, hex(bytes), "{value:?}");
        assert_eq!(muster_peer::wire::decode(&out).unwrap(), (value, out.len()));
    }
}

#[test]
fn numbers_follow_javascript() {
    let cases: Vec<(Value, &str)> = vec![
        (Value::Int(0), "00"),
        (Value::Float(-0.0), "00"),
        (Value::Int(127), "7f"),
        (Value::Int(128), "cc 80"),
        (Value::Int(65535), "cd ff ff"),
        (Value::Int(65536), "ce 00 01 00 00"),
        (Value::Int(-1), "ff"),
        (Value::Int(-33), "d0 df"),
        (Value::Int(-129), "d1 ff 7f"),
        (Value::Int(-32769), "d2 ff ff 7f ff"),
        // Beyond int32: a JavaScript number, float64.
        (Value::Int(1 << 31), "cb 41 e0 00 00 00 00 00 00"),
        (Value::Float(1.5), "cb 3f f8 00 00 00 00 00 00"),
    ];
    for (value, bytes) in cases {
        let mut out = Vec::new();
        muster_peer::wire::encode(&value, &mut out).unwrap();
        assert_eq!(out, hex(bytes), "{value:?}");
    }
    // Other encoders' integers and floats are read too.
    assert_eq!(muster_peer::wire::decode(&hex("cf 00 00 00 00 00 00 00 05")).unwrap().0, Value::Int(5));
    assert_eq!(muster_peer::wire::decode(&hex("ca 3f c0 00 00")).unwrap().0, Value::Float(1.5));
}

#[test]
fn ids_wrap_to_one() {
    let ids = PacketIds::starting_at(u32::MAX - 1);
    assert_eq!([ids.next(), ids.next(), ids.next()], [u32::MAX - 1, u32::MAX, 1]);
    assert_eq!(PacketIds::default().next(), 1);
}
