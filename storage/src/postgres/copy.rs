//! Postgres's binary COPY format, written by hand: a header, then per row a
//! field count and each field as a length and its big-endian bytes, then a
//! trailer. Hand-written because the schema is fixed and small, and writing
//! straight into one buffer per chunk keeps the snapshot's hot loop free of
//! per-value dynamic dispatch and awaits. And the COPY itself: a blocking
//! producer fills chunks, the async side forwards them to the server.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_postgres::{CopyInSink, Transaction};

use super::{PgError, PgTarget, blocking};

/// Signature, flags and header-extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// A field count of −1 ends the data.
const TRAILER: &[u8] = &[0xff, 0xff];
/// A chunk is handed to the connection once it is this large.
pub(super) const CHUNK_BYTES: usize = 1 << 20;
/// The OID of `text`, for `text[]` values.
const TEXT_OID: u32 = 25;

/// Rows in COPY binary encoding.
pub(super) struct CopyRows {
    buf: BytesMut,
    rows: u64,
    /// Rows already handed over in earlier chunks.
    emitted: u64,
}

/// Where a producer hands its chunks: to the COPY, through a small bounded
/// channel. Paced, chunks are small, so the producer's reading and encoding
/// is spread over the COPY as evenly as the sending.
pub(super) struct Chunks {
    sender: mpsc::Sender<(Bytes, u64)>,
    chunk_bytes: usize,
}

/// What a producer gets to emit with.
pub(super) type Emit<'a> = &'a mut Chunks;

impl Chunks {
    /// Hands a chunk and its row count over; false when nobody takes it any
    /// more.
    fn send(&mut self, chunk: Bytes, rows: u64) -> bool {
        self.sender.blocking_send((chunk, rows)).is_ok()
    }
}

impl CopyRows {
    pub(super) fn new() -> CopyRows {
        CopyRows {
            buf: BytesMut::with_capacity(CHUNK_BYTES + 4096),
            rows: 0,
            emitted: 0,
        }
    }

    /// Starts a row of `fields` values.
    pub(super) fn row(&mut self, fields: i16) -> &mut CopyRows {
        self.rows += 1;
        self.buf.put_i16(fields);
        self
    }

    pub(super) fn int8(&mut self, value: i64) -> &mut CopyRows {
        self.buf.put_i32(8);
        self.buf.put_i64(value);
        self
    }

    /// A `u64` as `bigint`; values beyond `i64::MAX` are refused, not wrapped.
    pub(super) fn uint8(
        &mut self,
        what: &'static str,
        value: u64,
    ) -> Result<&mut CopyRows, PgError> {
        let value = i64::try_from(value).map_err(|_| PgError::OutOfRange { what, value })?;
        Ok(self.int8(value))
    }

    pub(super) fn opt_uint8(
        &mut self,
        what: &'static str,
        value: Option<u64>,
    ) -> Result<&mut CopyRows, PgError> {
        match value {
            Some(value) => self.uint8(what, value),
            None => Ok(self.null()),
        }
    }

    pub(super) fn int4(&mut self, value: i32) -> &mut CopyRows {
        self.buf.put_i32(4);
        self.buf.put_i32(value);
        self
    }

    pub(super) fn boolean(&mut self, value: bool) -> &mut CopyRows {
        self.buf.put_i32(1);
        self.buf.put_u8(u8::from(value));
        self
    }

    /// `text` (and `bytea`): the bytes as they are.
    pub(super) fn bytes(&mut self, value: &[u8]) -> Result<&mut CopyRows, PgError> {
        let len = i32::try_from(value.len()).map_err(|_| PgError::OutOfRange {
            what: "a text value's length",
            value: value.len() as u64,
        })?;
        self.buf.put_i32(len);
        self.buf.put_slice(value);
        Ok(self)
    }

    pub(super) fn text(&mut self, value: &str) -> Result<&mut CopyRows, PgError> {
        self.bytes(value.as_bytes())
    }

    pub(super) fn opt_text(&mut self, value: Option<&str>) -> Result<&mut CopyRows, PgError> {
        match value {
            Some(value) => self.text(value),
            None => Ok(self.null()),
        }
    }

    /// A one-dimensional `text[]` without NULLs.
    pub(super) fn text_array(&mut self, values: &[String]) -> Result<&mut CopyRows, PgError> {
        let mut array = BytesMut::new();
        let dims = i32::from(!values.is_empty());
        array.put_i32(dims);
        array.put_i32(0);
        array.put_u32(TEXT_OID);
        if !values.is_empty() {
            let len = i32::try_from(values.len()).map_err(|_| PgError::OutOfRange {
                what: "an array's length",
                value: values.len() as u64,
            })?;
            array.put_i32(len);
            array.put_i32(1);
        }
        for value in values {
            let len = i32::try_from(value.len()).map_err(|_| PgError::OutOfRange {
                what: "a text value's length",
                value: value.len() as u64,
            })?;
            array.put_i32(len);
            array.put_slice(value.as_bytes());
        }
        self.bytes(&array)
    }

    pub(super) fn null(&mut self) -> &mut CopyRows {
        self.buf.put_i32(-1);
        self
    }

    #[cfg(test)]
    fn rows(&self) -> u64 {
        self.rows
    }

    /// Emits the buffer once it is a chunk's worth. False: stop producing.
    pub(super) fn flush_if_full(&mut self, emit: Emit<'_>) -> bool {
        self.buf.len() < emit.chunk_bytes || self.emit(emit)
    }

    /// Emits what is left.
    pub(super) fn finish(mut self, emit: Emit<'_>) -> bool {
        self.buf.is_empty() || self.emit(emit)
    }

    fn emit(&mut self, emit: Emit<'_>) -> bool {
        let rows = self.rows - self.emitted;
        self.emitted = self.rows;
        emit.send(self.buf.split().freeze(), rows)
    }
}

/// Runs `COPY … FROM STDIN (FORMAT binary)` with rows from `produce`, which
/// runs on a blocking thread and hands chunks over through a small bounded
/// channel (so at most a few chunks are in flight). Returns the rows the
/// server took and what `produce` returned.
pub(super) async fn copy_in<T: Send + 'static>(
    tx: &Transaction<'_>,
    target: &PgTarget,
    statement: &str,
    produce: impl FnOnce(Emit<'_>) -> Result<T, PgError> + Send + 'static,
) -> Result<(u64, T), PgError> {
    let mut sink = start(tx, target, statement).await?;
    let (received, producer) = produce_chunks(target, produce);
    let forward = async {
        // Owned by this block: if the COPY fails, `received` is dropped and
        // the producer stops at its next chunk instead of waiting forever.
        let mut received = received;
        let mut pace = Pace::new(target.max_rows_per_sec());
        while let Some((chunk, rows)) = received.recv().await {
            send_paced(&mut sink, target, &mut pace, chunk, rows).await?;
        }
        Ok::<_, PgError>(())
    };
    let (forwarded, produced) = futures_util::future::join(forward, producer).await;
    forwarded?;
    // A failed producer leaves the COPY unfinished; dropping the sink aborts it.
    let produced = produced?;
    let rows = finish(sink, target).await?;
    Ok((rows, produced))
}

/// Like [`copy_in`] into the table `staged`, but every chunk is a COPY of
/// its own, then `insert` (which takes the chunk's rows from `staged`), then
/// a `TRUNCATE staged`, so a large paced load never ends in one long
/// statement. Returns the rows `insert` reported in all.
pub(super) async fn copy_in_batches<T: Send + 'static>(
    tx: &Transaction<'_>,
    target: &PgTarget,
    statement: &str,
    insert: &str,
    staged: &str,
    produce: impl FnOnce(Emit<'_>) -> Result<T, PgError> + Send + 'static,
) -> Result<(u64, T), PgError> {
    let (received, producer) = produce_chunks(target, produce);
    let forward = async {
        let mut received = received;
        let mut pace = Pace::new(target.max_rows_per_sec());
        let truncate = format!("TRUNCATE {staged}");
        let mut moved = 0;
        while let Some((chunk, rows)) = received.recv().await {
            let mut sink = start(tx, target, statement).await?;
            send_paced(&mut sink, target, &mut pace, chunk, rows).await?;
            finish(sink, target).await?;
            moved += tx
                .execute(insert, &[])
                .await
                .map_err(target.fail("insert a COPY batch"))?;
            tx.batch_execute(&truncate)
                .await
                .map_err(target.fail("clear a COPY batch"))?;
        }
        Ok::<_, PgError>(moved)
    };
    let (forwarded, produced) = futures_util::future::join(forward, producer).await;
    let moved = forwarded?;
    Ok((moved, produced?))
}

type Sink = std::pin::Pin<Box<CopyInSink<Bytes>>>;

/// Starts a COPY and sends the binary header.
async fn start(tx: &Transaction<'_>, target: &PgTarget, statement: &str) -> Result<Sink, PgError> {
    let mut sink = Box::pin(
        tx.copy_in::<_, Bytes>(statement)
            .await
            .map_err(target.fail("start a COPY"))?,
    );
    sink.send(Bytes::from_static(HEADER))
        .await
        .map_err(target.fail("send COPY data"))?;
    Ok(sink)
}

/// Sends the trailer and ends the COPY; returns the rows the server took.
async fn finish(mut sink: Sink, target: &PgTarget) -> Result<u64, PgError> {
    sink.send(Bytes::from_static(TRAILER))
        .await
        .map_err(target.fail("send COPY data"))?;
    sink.as_mut()
        .finish()
        .await
        .map_err(target.fail("finish a COPY"))
}

/// Runs `produce` on a blocking thread; its chunks arrive on the receiver.
fn produce_chunks<T: Send + 'static>(
    target: &PgTarget,
    produce: impl FnOnce(Emit<'_>) -> Result<T, PgError> + Send + 'static,
) -> (
    mpsc::Receiver<(Bytes, u64)>,
    impl std::future::Future<Output = Result<T, PgError>>,
) {
    let (sender, received) = mpsc::channel::<(Bytes, u64)>(2);
    let chunk_bytes = match target.max_rows_per_sec() {
        Some(_) => PACED_SLICE_BYTES,
        None => CHUNK_BYTES,
    };
    let producer = blocking(move || {
        let mut chunks = Chunks {
            sender,
            chunk_bytes,
        };
        produce(&mut chunks)
    });
    (received, producer)
}

/// Sends one chunk. Paced, it goes out in small slices (COPY data may be
/// cut anywhere), so Postgres gets a steady trickle, not 1 MiB bursts.
async fn send_paced(
    sink: &mut Sink,
    target: &PgTarget,
    pace: &mut Pace,
    mut chunk: Bytes,
    rows: u64,
) -> Result<(), PgError> {
    let whole = chunk.len().max(1) as f64;
    while !chunk.is_empty() {
        let slice = chunk.split_to(pace.slice_bytes().min(chunk.len()));
        let share = rows as f64 * slice.len() as f64 / whole;
        sink.send(slice)
            .await
            .map_err(target.fail("send COPY data"))?;
        pace.sent(share).await;
    }
    Ok(())
}

/// Keeps a COPY at or under a rate: after each slice, waits until the rows
/// sent so far are due.
struct Pace {
    rows_per_sec: Option<u64>,
    started: tokio::time::Instant,
    sent: f64,
}

/// The slice a paced COPY sends at a time.
const PACED_SLICE_BYTES: usize = 64 * 1024;

impl Pace {
    fn new(rows_per_sec: Option<u64>) -> Pace {
        Pace {
            rows_per_sec,
            started: tokio::time::Instant::now(),
            sent: 0.0,
        }
    }

    fn slice_bytes(&self) -> usize {
        if self.rows_per_sec.is_some() {
            PACED_SLICE_BYTES
        } else {
            usize::MAX
        }
    }

    async fn sent(&mut self, rows: f64) {
        let Some(rate) = self.rows_per_sec else {
            return;
        };
        self.sent += rows;
        let due = std::time::Duration::from_secs_f64(self.sent / rate as f64);
        tokio::time::sleep_until(self.started + due).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pacing_spreads_chunks_over_time() {
        let mut pace = Pace::new(Some(1_000));
        let started = tokio::time::Instant::now();
        assert_eq!(pace.slice_bytes(), PACED_SLICE_BYTES);
        pace.sent(500.0).await;
        pace.sent(1_500.0).await;
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(2));
        let mut unpaced = Pace::new(None);
        assert_eq!(unpaced.slice_bytes(), usize::MAX);
        unpaced.sent(1_000_000.0).await;
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(2));
    }

    #[test]
    fn encodes_rows_as_postgres_expects() {
        let mut rows = CopyRows::new();
        rows.row(3).int8(-2).null();
        rows.text("hé").unwrap();
        assert_eq!(rows.rows(), 1);
        let mut expected = vec![0, 3];
        expected.extend([0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        expected.extend([0xff, 0xff, 0xff, 0xff]);
        expected.extend([0, 0, 0, 3, b'h', 0xc3, 0xa9]);
        assert_eq!(&rows.buf[..], &expected[..]);
    }

    #[test]
    fn refuses_values_beyond_bigint() {
        let mut rows = CopyRows::new();
        assert!(rows.uint8("seq", u64::MAX).is_err());
        assert!(rows.uint8("seq", i64::MAX as u64).is_ok());
    }

    #[test]
    fn empty_arrays_have_no_dimensions() {
        let mut rows = CopyRows::new();
        rows.text_array(&[]).unwrap();
        assert_eq!(
            &rows.buf[..],
            &[0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25]
        );
    }
}
