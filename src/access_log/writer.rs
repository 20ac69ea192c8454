//! The access log's writer thread: takes records off the bounded channel,
//! formats them, appends them to the UTC day's file through a `BufWriter`,
//! and flushes within `FLUSH_EVERY` of the first unflushed line, on request
//! and at the end. It rotates when a line's end time falls on a later UTC
//! day than the open file (never backwards, so a request that began before
//! midnight and ended after it cannot reopen yesterday's file).

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tokun_actors::metric;

use super::files::{day_file_name, day_of};
use super::line::write_line;
use super::{CHANNEL_CAPACITY, FLUSH_EVERY, Record};

/// Orders for the writer, on their own unbounded channel so they are never
/// dropped for a full line channel. Each carries the sender of its ack.
pub enum Control {
    Flush(Sender<()>),
    Stop(Sender<()>),
}

/// The open day file and what is waiting to be flushed to it.
pub struct Writer {
    dir: PathBuf,
    open: Option<DayFile>,
    /// One formatted line, reused.
    line: Vec<u8>,
    /// When the oldest line not yet flushed was written.
    unflushed_since: Option<Instant>,
    /// Lines written since the last flush, for the metric.
    written: u64,
    /// Set after a failure is logged, so a broken disk logs once, not per line.
    failing: bool,
}

struct DayFile {
    day: u64,
    file: BufWriter<File>,
}

/// Nothing to flush: how long the thread sleeps between looks at its channels.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// The thread's loop, until `Stop` or until every handle is gone.
pub fn run(mut writer: Writer, lines: &Receiver<Record>, orders: &Receiver<Control>) {
    loop {
        if writer.due().is_some_and(|due| due <= Instant::now()) {
            writer.flush();
        }
        let wait = writer.due().map_or(IDLE_WAIT, |due| {
            due.saturating_duration_since(Instant::now())
        });
        crossbeam_channel::select! {
            recv(lines) -> record => match record {
                Ok(record) => writer.write(&record),
                Err(_) => break,
            },
            recv(orders) -> order => match order {
                Ok(Control::Flush(ack)) => {
                    writer.drain(lines);
                    writer.flush();
                    let _ = ack.send(());
                }
                Ok(Control::Stop(ack)) => {
                    writer.drain(lines);
                    writer.flush();
                    let _ = ack.send(());
                    return;
                }
                Err(_) => break,
            },
            default(wait) => writer.flush(),
        }
    }
    writer.drain(lines);
    writer.flush();
}

impl Writer {
    pub fn new(dir: PathBuf) -> Writer {
        Writer {
            dir,
            open: None,
            line: Vec::with_capacity(512),
            unflushed_since: None,
            written: 0,
            failing: false,
        }
    }

    /// Appends one record to the file of the UTC day its request ended in.
    pub fn write(&mut self, record: &Record) {
        self.line.clear();
        if write_line(record, &mut self.line).is_err() {
            return self.lost("format", None);
        }
        let duration_ms = u64::try_from(record.duration.as_millis()).unwrap_or(u64::MAX);
        let day = day_of(record.ts_ms.saturating_add(duration_ms));
        if self.open.as_ref().is_none_or(|open| day > open.day) {
            self.flush();
            self.open = None;
            match DayFile::open(&self.dir, day) {
                Ok(file) => self.open = Some(file),
                Err(error) => return self.lost("io", Some(error)),
            }
        }
        let Some(open) = self.open.as_mut() else {
            return;
        };
        match open.file.write_all(&self.line) {
            Ok(()) => {
                self.written += 1;
                self.failing = false;
                self.unflushed_since.get_or_insert_with(Instant::now);
            }
            Err(error) => self.lost("io", Some(error)),
        }
    }

    /// Writes what is buffered to the file.
    pub fn flush(&mut self) {
        self.unflushed_since = None;
        if self.written > 0 {
            metric::counter_add("tokun_access_log_lines_total", &[], self.written);
            self.written = 0;
        }
        if let Some(open) = self.open.as_mut() {
            if let Err(error) = open.file.flush() {
                self.warn_once(&error);
            }
        }
    }

    /// When the buffered lines must be flushed, if any are waiting.
    fn due(&self) -> Option<Instant> {
        self.unflushed_since.map(|since| since + FLUSH_EVERY)
    }

    /// Writes what is already queued (at most a channel's worth, so a
    /// flood cannot keep a flush or a stop waiting forever).
    fn drain(&mut self, lines: &Receiver<Record>) {
        for record in lines.try_iter().take(CHANNEL_CAPACITY) {
            self.write(&record);
        }
    }

    fn lost(&mut self, reason: &'static str, error: Option<std::io::Error>) {
        metric::counter_add("tokun_access_log_dropped_total", &[("reason", reason)], 1);
        if let Some(error) = error {
            self.warn_once(&error);
        }
    }

    fn warn_once(&mut self, error: &std::io::Error) {
        if !self.failing {
            self.failing = true;
            tracing::warn!(%error, dir = %self.dir.display(), "cannot write the access log");
        }
    }
}

impl DayFile {
    fn open(dir: &Path, day: u64) -> std::io::Result<DayFile> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        // Client addresses are personal data: only tokun's user reads them.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(dir.join(day_file_name(day)))?;
        Ok(DayFile {
            day,
            file: BufWriter::with_capacity(64 * 1024, file),
        })
    }
}
