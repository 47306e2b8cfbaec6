//! CSV records read from a byte stream in bounded memory. A record longer than the cap (an
//! unterminated quote swallows the rest of a file into one field) or with more fields than the
//! cap is refused as one bad row: its bytes past the cap are dropped as they are read, and
//! reading goes on after it.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of one record (all its fields together) at most.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Fields of one record at most.
pub const MAX_FIELDS: usize = 1_000;
const READ_CHUNK: usize = 64 * 1024;

/// One record of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Fields(Vec<String>),
    /// Not read as fields; the reason names the cap or the encoding, `field` the field at fault
    /// (0-based) when there is one.
    Refused {
        field: Option<usize>,
        reason: String,
    },
}

pub struct RecordReader<R> {
    input: R,
    core: csv_core::Reader,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    eof: bool,
    /// Whether the file's first bytes have been read.
    started: bool,
    out: Vec<u8>,
    out_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
    too_long: bool,
    too_wide: bool,
    /// Of every byte read into records so far.
    hasher: Sha256,
}

/// A SHA-256 as lower-case hex, as the service's request digests are.
pub use contactier_runtime::convert::hex;

impl<R: AsyncRead + Unpin> RecordReader<R> {
    pub fn new(input: R, delimiter: u8) -> Self {
        Self {
            input,
            core: csv_core::ReaderBuilder::new().delimiter(delimiter).build(),
            buf: vec![0; READ_CHUNK],
            pos: 0,
            len: 0,
            eof: false,
            started: false,
            out: vec![0; 4 * 1024],
            out_len: 0,
            ends: vec![0; 64],
            ends_len: 0,
            too_long: false,
            too_wide: false,
            hasher: Sha256::new(),
        }
    }

    /// The digest of the file read so far: through the end of the last record, or the whole
    /// file once the reader has answered its end.
    pub fn digest(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }

    /// The next record; None at the end of the file.
    pub async fn next(&mut self) -> std::io::Result<Option<Record>> {
        loop {
            if self.pos == self.len && !self.eof {
                self.fill().await?;
            }
            let (result, read, written, ended) = self.core.read_record(
                &self.buf[self.pos..self.len],
                &mut self.out[self.out_len..],
                &mut self.ends[self.ends_len..],
            );
            self.hasher.update(&self.buf[self.pos..self.pos + read]);
            self.pos += read;
            self.out_len += written;
            self.ends_len += ended;
            match result {
                csv_core::ReadRecordResult::InputEmpty => {}
                csv_core::ReadRecordResult::OutputFull if self.out.len() < MAX_RECORD_BYTES => {
                    let grown = (self.out.len() * 2).min(MAX_RECORD_BYTES);
                    self.out.resize(grown, 0);
                }
                csv_core::ReadRecordResult::OutputFull => {
                    // Past the cap: the record is refused, its bytes are not kept.
                    self.too_long = true;
                    self.out_len = 0;
                    self.ends_len = 0;
                }
                csv_core::ReadRecordResult::OutputEndsFull if self.ends.len() < MAX_FIELDS + 1 => {
                    let grown = (self.ends.len() * 2).min(MAX_FIELDS + 1);
                    self.ends.resize(grown, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    self.too_wide = true;
                    self.out_len = 0;
                    self.ends_len = 0;
                }
                csv_core::ReadRecordResult::Record => return Ok(Some(self.take())),
                csv_core::ReadRecordResult::End => return Ok(None),
            }
        }
    }

    /// Reads the next bytes into the emptied buffer. The file's first read takes at least four
    /// (or the whole of a shorter file): a byte order mark split over two chunks is seen whole
    /// and dropped, not read into the first column's name.
    async fn fill(&mut self) -> std::io::Result<()> {
        // A mark alone is the end of the input to the CSV reader: one byte past it, too.
        let want = if self.started { 1 } else { 4 };
        self.started = true;
        self.pos = 0;
        self.len = 0;
        while self.len < want {
            let n = self.input.read(&mut self.buf[self.len..]).await?;
            if n == 0 {
                break;
            }
            self.len += n;
        }
        self.eof = self.len == 0;
        Ok(())
    }

    fn take(&mut self) -> Record {
        let record = if self.too_long {
            Record::Refused {
                field: None,
                reason: format!("a record of more than {MAX_RECORD_BYTES} bytes (an unclosed quote?)"),
            }
        } else if self.too_wide || self.ends_len > MAX_FIELDS {
            Record::Refused { field: None, reason: format!("more than {MAX_FIELDS} fields") }
        } else {
            let mut fields = Vec::with_capacity(self.ends_len);
            let mut start = 0;
            let mut bad = None;
            for (i, &end) in self.ends[..self.ends_len].iter().enumerate() {
                if let Ok(f) = std::str::from_utf8(&self.out[start..end]) {
                    fields.push(f.to_owned());
                } else {
                    bad = Some(i);
                    break;
                }
                start = end;
            }
            match bad {
                Some(field) => Record::Refused {
                    field: Some(field),
                    reason: format!("field {} is not UTF-8", field + 1),
                },
                None => Record::Fields(fields),
            }
        };
        self.out_len = 0;
        self.ends_len = 0;
        self.too_long = false;
        self.too_wide = false;
        // A record that grew the buffer gives the memory back.
        if self.out.len() > 64 * 1024 {
            self.out.truncate(64 * 1024);
            self.out.shrink_to_fit();
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(data: &[u8]) -> Vec<Record> {
        let mut r = RecordReader::new(data, b',');
        let mut out = Vec::new();
        while let Some(rec) = r.next().await.unwrap() {
            out.push(rec);
        }
        out
    }

    fn fields(v: &[&str]) -> Record {
        Record::Fields(v.iter().map(std::string::ToString::to_string).collect())
    }

    #[tokio::test]
    async fn the_digest_at_a_record_does_not_depend_on_how_the_file_was_split() {
        let file = b"email,name\r\na@example.com,\"A, \"\"Ada\"\"\"\r\nb@example.com,B\n";
        let whole = hex(&Sha256::digest(file));
        for split in [1, 2, 7, 16, file.len()] {
            let chunks: Vec<std::io::Result<bytes::Bytes>> =
                file.chunks(split).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
            let mut r =
                RecordReader::new(tokio_util::io::StreamReader::new(futures::stream::iter(chunks)), b',');
            r.next().await.unwrap();
            let after_header = r.digest();
            r.next().await.unwrap();
            r.next().await.unwrap();
            assert!(r.next().await.unwrap().is_none());
            assert_eq!(r.digest(), whole, "split every {split}");
            let mut one = RecordReader::new(&file[..], b',');
            one.next().await.unwrap();
            assert_eq!(after_header, one.digest(), "split every {split}");
        }
    }

    #[tokio::test]
    async fn a_byte_order_mark_is_not_part_of_the_header_however_the_file_was_split() {
        let file = "\u{feff}email,name\nb@example.com,B\n".as_bytes();
        for split in [1, 2, 3, 4, file.len()] {
            let chunks: Vec<std::io::Result<bytes::Bytes>> =
                file.chunks(split).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
            let mut r =
                RecordReader::new(tokio_util::io::StreamReader::new(futures::stream::iter(chunks)), b',');
            assert_eq!(r.next().await.unwrap(), Some(fields(&["email", "name"])), "split every {split}");
            assert_eq!(r.next().await.unwrap(), Some(fields(&["b@example.com", "B"])), "split every {split}");
            assert_eq!(r.next().await.unwrap(), None, "split every {split}");
            assert_eq!(r.digest(), hex(&Sha256::digest(file)), "split every {split}");
        }
    }

    #[tokio::test]
    async fn records_are_read_as_csv_reads_them() {
        let got = read_all(b"a,b\r\n\"x,1\",\"say \"\"hi\"\"\"\nlast,\n").await;
        assert_eq!(got, [fields(&["a", "b"]), fields(&["x,1", "say \"hi\""]), fields(&["last", ""])]);
        assert_eq!(read_all(b"no newline").await, [fields(&["no newline"])]);
    }

    #[tokio::test]
    async fn an_oversized_record_is_refused_and_reading_goes_on() {
        let mut data = b"email\nok@example.com\n\"".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_RECORD_BYTES + 10));
        data.extend(b"\"\nafter@example.com\n");
        let got = read_all(&data).await;
        assert_eq!(got.len(), 4);
        assert_eq!(got[1], fields(&["ok@example.com"]));
        assert!(
            matches!(&got[2], Record::Refused { reason, .. } if reason.contains("bytes")),
            "{:?}",
            got[2]
        );
        assert_eq!(got[3], fields(&["after@example.com"]));
    }

    #[tokio::test]
    async fn an_unclosed_quote_to_the_end_of_the_file_is_one_refused_row() {
        let mut data = b"email\n\"".to_vec();
        data.extend(std::iter::repeat_n(b'y', 3 * MAX_RECORD_BYTES));
        let got = read_all(&data).await;
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[1], Record::Refused { .. }));
    }

    #[tokio::test]
    async fn too_many_fields_and_bad_encoding_are_refused() {
        let wide = format!("{}\nok\n", "x,".repeat(MAX_FIELDS));
        let got = read_all(wide.as_bytes()).await;
        assert!(matches!(&got[0], Record::Refused { reason, .. } if reason.contains("fields")));
        assert_eq!(got[1], fields(&["ok"]));
        let got = read_all(b"a,\xff\xfe\nb,c\n").await;
        assert_eq!(got[0], Record::Refused { field: Some(1), reason: "field 2 is not UTF-8".into() });
        assert_eq!(got[1], fields(&["b", "c"]));
        let exactly = format!("{}x\n", "x,".repeat(MAX_FIELDS - 1));
        assert!(matches!(&read_all(exactly.as_bytes()).await[0], Record::Fields(f) if f.len() == MAX_FIELDS));
    }
}
