//! The file an import stream carries: its chunks as bytes, up to the end part that says the
//! file is whole.
//!
//! A gRPC client whose deadline passes, or whose call is cancelled, may close its side of the
//! stream as a finished upload does; read as the file's end, that made an import of part of a
//! file COMPLETED (with its last row perhaps cut in two), and the retry of the whole file was
//! then refused as a different request. Only the end part ends a file; a stream that stops
//! without it is an error where the file stops, so the reader never takes a cut row for a
//! whole one and the import stays open for a retry.

use crate::error::Error;
use contactier_proto::contacts::v1 as pb;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use pb::import_contacts_request::Part;
use std::time::Duration;
use tonic::Status;

/// Why the file stopped before its end part, carried inside the `io::Error` the CSV reader
/// hands on.
#[derive(Debug, thiserror::Error)]
pub enum Arrival {
    #[error("the stream ended without its end part: the file was cut off")]
    Cut,
    #[error("nothing arrived for {0} s")]
    Idle(u64),
    #[error("{0}")]
    Broke(String),
    #[error("the end part gives the file's size as {said} bytes; {got} arrived")]
    Size { said: i64, got: i64 },
    #[error("after the header only chunks and one end part may follow")]
    Misplaced,
    /// A part the transport refused before it reached the import (past its size, or past a
    /// limit its contract declares).
    #[error("{}", .0.message())]
    Refused(Status),
}

impl Arrival {
    /// The error an import answers with: a file that did not arrive whole is ABORTED (the
    /// retry takes it up); a stream that breaks the protocol is INVALID_ARGUMENT.
    pub fn to_error(&self) -> Error {
        match self {
            Arrival::Size { .. } => Error::invalid("end.size", self.to_string()),
            Arrival::Misplaced => Error::invalid("part", self.to_string()),
            Arrival::Refused(s) if s.code() == tonic::Code::InvalidArgument => {
                match s.message().split_once(": ") {
                    Some((field, reason)) => Error::invalid(field, reason),
                    None => Error::invalid("part", s.message()),
                }
            }
            Arrival::Refused(s) if s.code() == tonic::Code::OutOfRange => {
                Error::OutOfRange(s.message().to_owned())
            }
            Arrival::Cut | Arrival::Idle(_) | Arrival::Broke(_) | Arrival::Refused(_) => {
                Error::Aborted(self.to_string())
            }
        }
    }

    /// Whether the file may arrive whole if sent again: it broke off, rather than broke a rule.
    pub fn retry(&self) -> bool {
        matches!(self.to_error(), Error::Aborted(_))
    }

    /// The arrival error inside an error the reader answered, if it is one.
    pub fn of(e: &std::io::Error) -> Option<&Arrival> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Arrival>())
    }
}

/// The file's bytes as they arrive, ending at the end part. A stream that stops without it,
/// waits longer than `idle` for a message, or says the file's size wrong, yields the error
/// there and then stops.
pub fn bytes<S>(input: S, idle: Duration) -> BoxStream<'static, std::io::Result<std::io::Cursor<Vec<u8>>>>
where
    S: Stream<Item = Result<pb::ImportContactsRequest, Status>> + Send + 'static,
{
    let input = Box::pin(tokio_stream::StreamExt::timeout(input, idle));
    futures::stream::unfold(Some((input, 0i64)), move |state| async move {
        let (mut input, seen) = state?;
        let stop = match input.next().await {
            Some(Ok(Ok(pb::ImportContactsRequest { part: Some(Part::Chunk(b)) }))) => {
                let seen = seen + b.len() as i64;
                return Some((Ok(std::io::Cursor::new(b)), Some((input, seen))));
            }
            Some(Ok(Ok(pb::ImportContactsRequest { part: Some(Part::End(end)) }))) => {
                if end.size == 0 || end.size == seen {
                    return None;
                }
                Arrival::Size { said: end.size, got: seen }
            }
            Some(Ok(Ok(_))) => Arrival::Misplaced,
            Some(Ok(Err(status)))
                if matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::OutOfRange) =>
            {
                Arrival::Refused(status)
            }
            Some(Ok(Err(status))) => Arrival::Broke(status.message().to_owned()),
            Some(Err(_)) => Arrival::Idle(idle.as_secs()),
            None => Arrival::Cut,
        };
        Some((Err(std::io::Error::other(stop)), None))
    })
    .boxed()
}

/// The SHA-256 of a whole file in hex, or why it did not arrive whole.
pub async fn digest<S>(input: S, idle: Duration) -> Result<String, Error>
where
    S: Stream<Item = Result<pb::ImportContactsRequest, Status>> + Send + 'static,
{
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut file = bytes(input, idle);
    while let Some(chunk) = file.next().await {
        match chunk {
            Ok(b) => hasher.update(b.get_ref()),
            Err(e) => {
                return Err(Arrival::of(&e).map_or_else(|| Error::Aborted(e.to_string()), Arrival::to_error));
            }
        }
    }
    Ok(crate::csv_records::hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(b: &[u8]) -> Result<pb::ImportContactsRequest, Status> {
        Ok(pb::ImportContactsRequest { part: Some(Part::Chunk(b.to_vec())) })
    }

    fn end(size: i64) -> Result<pb::ImportContactsRequest, Status> {
        Ok(pb::ImportContactsRequest { part: Some(Part::End(pb::ImportEnd { size })) })
    }

    /// The bytes that came through, then the error that stopped them (None if the file ended).
    async fn read(parts: Vec<Result<pb::ImportContactsRequest, Status>>) -> (Vec<u8>, Option<String>) {
        let mut got = Vec::new();
        let mut file = bytes(futures::stream::iter(parts), Duration::from_secs(5));
        while let Some(b) = file.next().await {
            match b {
                Ok(b) => got.extend(b.into_inner()),
                Err(e) => {
                    return (got, Some(Arrival::of(&e).expect("an arrival error").to_error().to_string()));
                }
            }
        }
        (got, None)
    }

    #[tokio::test]
    async fn a_file_ends_at_its_end_part() {
        let (got, stop) = read(vec![chunk(b"Email\n"), chunk(b"a@example.com\n"), end(20)]).await;
        assert_eq!((got.as_slice(), stop), (&b"Email\na@example.com\n"[..], None));
        let (_, stop) = read(vec![chunk(b"Email\n"), end(0)]).await;
        assert_eq!(stop, None, "a size of 0 is not checked");
    }

    #[tokio::test]
    async fn a_stream_that_stops_without_its_end_part_was_cut_off() {
        let (got, stop) = read(vec![chunk(b"Email\n"), chunk(b"a@exa")]).await;
        assert_eq!(got, b"Email\na@exa");
        let stop = stop.expect("an error where the file stops");
        assert!(stop.contains("without its end part"), "{stop}");
    }

    #[tokio::test]
    async fn a_wrong_size_names_the_field() {
        let (_, stop) = read(vec![chunk(b"Email\n"), end(7)]).await;
        let stop = stop.expect("an error");
        assert!(stop.contains("end.size") && stop.contains("7 bytes; 6 arrived"), "{stop}");
    }

    #[tokio::test]
    async fn a_header_among_the_chunks_is_refused_and_nothing_after_the_end_is_read() {
        let header = Ok(pb::ImportContactsRequest { part: Some(Part::Header(pb::ImportHeader::default())) });
        let (_, stop) = read(vec![chunk(b"Email\n"), header]).await;
        assert!(stop.expect("an error").contains("part"));
        let (got, stop) = read(vec![chunk(b"Email\n"), end(6), chunk(b"more")]).await;
        assert_eq!((got.as_slice(), stop), (&b"Email\n"[..], None));
    }

    #[tokio::test]
    async fn a_part_the_transport_refused_keeps_its_code() {
        let (_, stop) =
            read(vec![chunk(b"Email\n"), Err(Status::invalid_argument("end.size: must be from 0"))]).await;
        assert_eq!(stop.as_deref(), Some("end.size: must be from 0"));
        let big = Status::out_of_range("Error, decoded message length too large");
        let mut file =
            bytes(futures::stream::iter(vec![chunk(b"Email\n"), Err(big)]), Duration::from_secs(5));
        let _ = file.next().await;
        let e = file.next().await.unwrap().unwrap_err();
        let arrival = Arrival::of(&e).unwrap();
        assert!(matches!(arrival.to_error(), Error::OutOfRange(_)) && !arrival.retry());
    }

    #[tokio::test]
    async fn a_broken_stream_is_aborted_for_a_retry() {
        let (_, stop) = read(vec![chunk(b"Email\n"), Err(Status::cancelled("gone"))]).await;
        let stop = stop.expect("an error");
        assert!(stop.contains("gone"), "{stop}");
        let cut = digest(futures::stream::iter(vec![chunk(b"Email\n")]), Duration::from_secs(5)).await;
        assert!(matches!(cut, Err(Error::Aborted(_))), "{cut:?}");
        let whole = digest(
            futures::stream::iter(vec![chunk(b"Em"), chunk(b"ail\n"), end(6)]),
            Duration::from_secs(5),
        );
        assert_eq!(whole.await.unwrap().len(), 64);
    }
}
