//! The control-stream frame decoder.

use tunnel_proto::frame::{decode_payload, parse_header};
use tunnel_proto::limits::{FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD};
use tunnel_proto::{Error, Frame};

/// Bytes as a peer sends them: frames decoded one after another, as the
/// control stream reads them; then the same bytes as one payload of the
/// type named by the first byte.
///
/// Invariants: a decoded frame re-encodes to exactly the bytes it came from
/// (one frame, one encoding), except a route set, whose JSON may be written
/// differently but decodes back to the same frame; every shorter prefix of
/// a frame asks for more bytes; what the header check accepts is within the
/// size limit.
pub fn frame(data: &[u8]) {
    let mut rest = data;
    loop {
        match Frame::decode(rest) {
            Ok(Some((frame, used))) => {
                assert!(
                    (FRAME_HEADER_LEN..=rest.len()).contains(&used),
                    "consumed {used} of {}",
                    rest.len()
                );
                assert!(used - FRAME_HEADER_LEN <= MAX_FRAME_PAYLOAD);
                for cut in [0, FRAME_HEADER_LEN - 1, FRAME_HEADER_LEN, used - 1] {
                    if cut < used {
                        assert!(
                            matches!(Frame::decode(&rest[..cut]), Ok(None)),
                            "a {cut}-byte prefix of a {used}-byte frame did not ask for more"
                        );
                    }
                }
                check_reencodes(&frame, &rest[..used]);
                rest = &rest[used..];
            }
            Ok(None) => {
                // Only a header that passes its checks may wait for more.
                if let Some(h) = rest.get(..FRAME_HEADER_LEN) {
                    let header: &[u8; FRAME_HEADER_LEN] = h.try_into().expect("a header-sized slice");
                    let (_, len) = parse_header(header).expect("an incomplete frame with a bad header");
                    assert!(rest.len() < FRAME_HEADER_LEN + len);
                }
                break;
            }
            Err(_) => break,
        }
    }
    if let Some((&ty, payload)) = data.split_first()
        && let Ok(frame) = decode_payload(ty, payload)
    {
        let mut bytes = vec![tunnel_proto::limits::WIRE_VERSION, ty];
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload);
        check_reencodes(&frame, &bytes);
    }
}

/// `frame` came from `bytes` (a whole frame, header included).
fn check_reencodes(frame: &Frame, bytes: &[u8]) {
    match frame.to_bytes() {
        Ok(again) if matches!(frame, Frame::Routes(_)) => {
            let (back, used) = Frame::decode(&again)
                .expect("a re-encoded route set decodes")
                .expect("a re-encoded route set is whole");
            assert_eq!(used, again.len());
            assert_eq!(&back, frame, "a route set changed on its way through JSON");
        }
        Ok(again) => assert_eq!(again, bytes, "{} re-encodes differently", frame.name()),
        // JSON written back may be longer than what came in (defaults
        // filled in), so only a route set may outgrow the limit.
        Err(Error::FrameTooLarge { .. }) if matches!(frame, Frame::Routes(_)) => {}
        Err(e) => panic!("a decoded {} does not encode: {e}", frame.name()),
    }
}
