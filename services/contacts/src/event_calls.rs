//! How the relay's outbox entries of contact events go to marketing-status: consecutive entries
//! in one call until the call would pass a size or count bound, each entry still its own batch
//! (`batch_sizes`), so the count moves once for each as when it went alone. An entry is a batch
//! (one contact changed, or a whole import batch); sent a call each, an account's backlog of
//! single changes went at one round trip each (680 in 17 s), and every account's newer events
//! waited behind it.

/// Payload bytes a call carries at most, well within the 4 MiB a message may have; an entry
/// larger than it goes alone.
pub const CALL_BYTES: usize = 2 << 20;
/// Events a call carries at most (the request's own limit).
pub const CALL_EVENTS: usize = 10_000;

/// The entries, given as (payload bytes, events), in calls: ranges of consecutive entries, in
/// order, each within [`CALL_BYTES`] and [`CALL_EVENTS`] unless one entry alone passes them.
pub fn calls(entries: &[(usize, usize)]) -> Vec<std::ops::Range<usize>> {
    let mut calls = Vec::new();
    let (mut start, mut bytes, mut events) = (0, 0, 0);
    for (i, &(b, e)) in entries.iter().enumerate() {
        if i > start && (bytes + b > CALL_BYTES || events + e > CALL_EVENTS) {
            calls.push(start..i);
            (start, bytes, events) = (i, 0, 0);
        }
        bytes += b;
        events += e;
    }
    if start < entries.len() {
        calls.push(start..entries.len());
    }
    calls
}

/// The events in an outbox entry's payload (an `ApplyContactEventsRequest`), counted from its
/// field keys without decoding them; 1 for a payload that does not parse (its decoding then
/// fails the call).
pub fn event_count(payload: &[u8]) -> usize {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let mut buf = payload;
    let mut n = 0;
    while !buf.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut buf) else { return n.max(1) };
        if tag == 1 && wire_type == WireType::LengthDelimited {
            let Ok(len) = decode_varint(&mut buf) else { return n.max(1) };
            let Some(rest) = buf.get(usize::try_from(len).unwrap_or(usize::MAX)..) else { return n.max(1) };
            buf = rest;
            n += 1;
        } else if skip_field(wire_type, tag, &mut buf, DecodeContext::default()).is_err() {
            return n.max(1);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_entries_share_a_call_and_large_ones_go_alone() {
        assert!(calls(&[]).is_empty());
        let one = calls(&[(300, 1); 680]);
        assert_eq!((one.len(), one[0].clone()), (1, 0..680), "680 single changes in one call");
        // Bytes: the third would pass the bound, so it starts the next call.
        let big = CALL_BYTES / 2;
        assert_eq!(calls(&[(big, 1), (big, 1), (1, 1)]), [0..2, 2..3]);
        // An entry larger than a call goes alone, between the others.
        assert_eq!(calls(&[(1, 1), (CALL_BYTES + 1, 1), (1, 1)]), [0..1, 1..2, 2..3]);
        // Events: an import batch of 9,000 and one of 2,000 go apart.
        assert_eq!(calls(&[(1, 9_000), (1, 2_000), (1, 1)]), [0..1, 1..3]);
    }

    #[test]
    fn events_are_counted_without_decoding_them() {
        use contactier_proto::marketing_status::v1 as mpb;
        use prost::Message;
        for n in [0, 1, 3, 500] {
            let events = (0..n)
                .map(|i| mpb::ContactEvent {
                    event_id: format!("e{i}"),
                    account_id: "a".into(),
                    ..Default::default()
                })
                .collect();
            let payload = mpb::ApplyContactEventsRequest { events, batch_sizes: vec![] }.encode_to_vec();
            assert_eq!(event_count(&payload), n, "{n} events");
        }
        assert_eq!(event_count(&[0x0a, 0xff]), 1, "a payload that does not parse");
    }
}
