//! CSV import streamed over gRPC. The header message says how to read the file; chunks of it
//! follow, split anywhere. Rows are parsed as they arrive and written a batch at a time, so
//! memory stays bounded whatever the file size; a bad row is reported (row, column, reason) and
//! never stops the good ones. Progress goes back after every batch.
//!
//! An import cut off (its client gone, its process killed) is taken up again by a retry under
//! the same request id sending the same file: rows up to its last saved progress are skipped,
//! and contacts it created in the batch it was writing are recognised, not created twice.

use crate::convert::{self, source_type_name};
use crate::csv_records::{Record, RecordReader};
use crate::email;
use crate::error::{Error, Result};
use crate::import_file;
use crate::properties::{self, Catalog, Value};
use crate::store::{
    Beat, Change, ConsentRow, ImportErrorRow, ImportRow, NewContact, Origin, Owner, Start, Store, TAKEN_OVER,
};
use contactier_proto::common::v1 as common;
use contactier_proto::contacts::v1 as pb;
use contactier_runtime::clock::{Clock, WorkerWaker};
use contactier_runtime::convert::{micros, new_id};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::{BTreeMap, HashMap, HashSet};
use tonic::{Status, Streaming};

/// Refused rows an import lists (ListImportErrors); its summary counts every one. A file of
/// empty records stored a hundred times its size in errors.
pub const LISTED_ROWS: i64 = 10_000;
/// Characters of a listed error's reason, and of its column's name, at most.
const LISTED_REASON: usize = 1_000;
const LISTED_COLUMN: usize = 256;

/// The errors of a batch an import keeps: those of its first refused rows while fewer than
/// [`LISTED_ROWS`] are listed (`listed` before it), reasons and column names cut short.
pub fn to_list(mut errors: Vec<ImportErrorRow>, listed: i64) -> Vec<ImportErrorRow> {
    errors.sort_by(|a, b| (a.row_number, &a.column_name).cmp(&(b.row_number, &b.column_name)));
    let mut rows = listed;
    let mut last = None;
    errors.retain(|e| {
        if last != Some(e.row_number) {
            last = Some(e.row_number);
            rows += 1;
        }
        rows <= LISTED_ROWS
    });
    for e in &mut errors {
        clip(&mut e.reason, LISTED_REASON);
        clip(&mut e.column_name, LISTED_COLUMN);
    }
    errors
}

/// `text` cut to `chars` characters, an ellipsis saying so ([`properties::cut`]).
fn clip(text: &mut String, chars: usize) {
    if let std::borrow::Cow::Owned(short) = properties::cut(text, chars) {
        *text = short;
    }
}

/// Rows written per transaction.
pub const BATCH_ROWS: usize = 1_000;
/// Bytes of values a batch holds at most, whatever its rows: a row may take up to 1 MiB, and a
/// thousand such rows made a batch, and the statements writing it, of a gigabyte and more.
pub const BATCH_BYTES: usize = 8 << 20;
/// Rows between refreshes of the planner's statistics during an import.
const STATISTICS_EVERY: i64 = 100_000;
/// A running import's owner marks it alive this often; a retry takes over one not marked for
/// [`LEASE`].
const BEAT: std::time::Duration = std::time::Duration::from_secs(2);
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(10);
/// How long an import waits for the next part of its file.
const IDLE: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Create,
    Update,
    Upsert,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Create => "create",
            Mode::Update => "update",
            Mode::Upsert => "upsert",
        }
    }
}

/// How to read the file, checked.
#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    /// CSV column -> property; "email" maps the address.
    pub mapping: BTreeMap<String, String>,
    pub set_as_marketing: bool,
    pub opt_in_column: Option<String>,
    pub legal_basis: String,
    pub delimiter: u8,
}

/// Checks a header against the account's properties.
pub fn plan(h: &pb::ImportHeader, catalog: &Catalog) -> Result<Plan> {
    let mode = match pb::ImportMode::try_from(h.mode) {
        Ok(pb::ImportMode::Create) => Mode::Create,
        Ok(pb::ImportMode::Update) => Mode::Update,
        Ok(pb::ImportMode::Upsert) => Mode::Upsert,
        _ => return Err(Error::invalid("header.mode", "CREATE, UPDATE or UPSERT")),
    };
    let mut mapping = BTreeMap::new();
    for (column, property) in &h.column_mapping {
        if property != "email" && catalog.get(property).is_none() {
            return Err(Error::invalid(
                format!("header.column_mapping.{column}"),
                format!("no such property {property:?}"),
            ));
        }
        if properties::CALCULATED.contains(&property.as_str()) {
            return Err(Error::invalid(
                format!("header.column_mapping.{column}"),
                format!("{property} is worked out from the account's scoring rules; not imported"),
            ));
        }
        mapping.insert(column.clone(), property.clone());
    }
    let emails = mapping.values().filter(|p| *p == "email").count();
    if emails != 1 {
        return Err(Error::invalid("header.column_mapping", "exactly one column must map to email"));
    }
    let delimiter = match h.delimiter.as_bytes() {
        [] => b',',
        [d] if *d != b'"' && *d != b'\n' && *d != b'\r' => *d,
        _ => return Err(Error::invalid("header.delimiter", "one character, not a quote or line break")),
    };
    Ok(Plan {
        mode,
        mapping,
        set_as_marketing: h.set_as_marketing,
        opt_in_column: Some(h.gdpr_opt_in_column.clone()).filter(|c| !c.is_empty()),
        legal_basis: if h.gdpr_legal_basis.is_empty() {
            "consent".into()
        } else {
            h.gdpr_legal_basis.clone()
        },
        delimiter,
    })
}

/// One data row, checked: its email, values and opt-in, or the reasons it is refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub number: i64,
    pub email: email::Email,
    pub values: BTreeMap<String, Value>,
    pub opt_in: bool,
}

/// A CSV reader of `reader` past its header, with the header's (trimmed) column names; refused
/// when the header cannot be read, or lacks a column the plan maps or names one twice.
pub async fn open_csv<R: tokio::io::AsyncRead + Unpin + Send>(
    reader: R,
    plan: &Plan,
) -> Result<(Vec<String>, RecordReader<R>)> {
    let mut csv = RecordReader::new(reader, plan.delimiter);
    let headers: Vec<String> = match csv.next().await {
        Ok(Some(Record::Fields(h))) => h.iter().map(|h| h.trim().to_owned()).collect(),
        Ok(Some(Record::Refused { reason, .. })) => {
            return Err(Error::invalid("chunk", format!("CSV header: {reason}")));
        }
        Ok(None) => return Err(Error::invalid("chunk", "CSV header: the file is empty")),
        Err(e) => {
            return Err(match import_file::Arrival::of(&e) {
                Some(a) => a.to_error(),
                None => Error::invalid("chunk", format!("CSV header: {e}")),
            });
        }
    };
    for column in plan.mapping.keys().chain(plan.opt_in_column.iter()) {
        match headers.iter().filter(|h| *h == column).count() {
            0 => {
                return Err(Error::invalid(
                    "header.column_mapping",
                    format!("the file has no column {column:?}"),
                ));
            }
            1 => {}
            // Which of its cells a contact would get is not for the import to guess.
            _ => {
                return Err(Error::invalid(
                    "header.column_mapping",
                    format!("the file names the column {column:?} twice"),
                ));
            }
        }
    }
    Ok((headers, csv))
}

/// Checks a record against the plan; empty cells leave a property as it is.
pub fn check_row(
    number: i64,
    headers: &[String],
    record: &[String],
    plan: &Plan,
    catalog: &Catalog,
) -> std::result::Result<Row, Vec<ImportErrorRow>> {
    let mut errors = Vec::new();
    let mut email = None;
    let mut values = BTreeMap::new();
    let mut opt_in = false;
    let err = |column: &str, reason: String| ImportErrorRow {
        row_number: number,
        column_name: column.to_owned(),
        reason,
    };
    for (i, column) in headers.iter().enumerate() {
        let cell = record.get(i).map_or("", String::as_str);
        if cell.contains('\0') {
            errors.push(err(column, "must not contain a NUL character".into()));
            continue;
        }
        if plan.opt_in_column.as_deref() == Some(column.as_str()) && !cell.trim().is_empty() {
            match properties::parse_bool(cell) {
                Some(b) => opt_in = b,
                None => errors
                    .push(err(column, format!("{} is not true or false", properties::quoted(cell.trim())))),
            }
        }
        let Some(property) = plan.mapping.get(column) else { continue };
        if property == "email" {
            match email::parse(cell) {
                Ok(e) => email = Some(e),
                Err(r) => errors.push(err(column, format!("email: {r}"))),
            }
            continue;
        }
        if cell.trim().is_empty() {
            continue;
        }
        let def = catalog.get(property).expect("mapping checked against the catalog");
        match properties::normalize(def, cell) {
            Ok(v) => {
                values.insert(property.clone(), v);
            }
            Err(r) => errors.push(err(column, r)),
        }
    }
    if record.len() != headers.len() {
        errors.push(err("", format!("{} fields; the header has {}", record.len(), headers.len())));
    }
    if let Err(r) = properties::check_values_total(&values) {
        errors.push(err("", r));
    }
    match (email, errors.is_empty()) {
        (Some(email), true) => Ok(Row { number, email, values, opt_in }),
        (_, _) => Err(errors),
    }
}

type Progress = std::result::Result<pb::ImportContactsResponse, Status>;

/// What an import works with.
#[derive(Clone)]
pub struct Importer {
    pub store: Store,
    pub clock: Clock,
    /// The relay of contact events, woken after each batch.
    pub relay: WorkerWaker,
    /// The import's place among its account's running ones, held until it ends.
    pub slot: std::sync::Arc<crate::import_slots::Slot>,
}

/// An import's first message, checked against the account's properties.
pub struct Opened {
    pub header: pb::ImportHeader,
    pub plan: Plan,
    catalog: Catalog,
}

/// Reads the header and plans the import from it.
pub async fn open(
    store: &Store,
    account: &str,
    input: &mut Streaming<pb::ImportContactsRequest>,
) -> Result<Opened> {
    let first = input.message().await.map_err(|e| match e.code() {
        // Over the size a message may be, or past a limit of its contract: said as for any
        // other part, naming the field the transport named.
        tonic::Code::OutOfRange | tonic::Code::InvalidArgument => import_file::Arrival::Refused(e).to_error(),
        _ => Error::invalid("header", e.message().to_owned()),
    })?;
    let header = match first {
        Some(pb::ImportContactsRequest { part: Some(pb::import_contacts_request::Part::Header(h)) }) => h,
        _ => return Err(Error::invalid("header", "the first message must be the header")),
    };
    let catalog = store.catalog(account).await?;
    let plan = plan(&header, &catalog)?;
    Ok(Opened { header, plan, catalog })
}

/// Runs an opened import in its own task, streaming progress back. It is recorded in a task of
/// its own too: a call given up while the record goes in (its deadline) still runs the import
/// it recorded, which ends at once with the call's cut file, instead of leaving it "running"
/// for a resend to wait out its lease.
pub async fn start(
    ctx: Importer,
    account: String,
    user: String,
    opened: Opened,
    input: Streaming<pb::ImportContactsRequest>,
) -> std::result::Result<BoxStream<'static, Progress>, Status> {
    tokio::spawn(begin(ctx, account, user, opened, input))
        .await
        .map_err(|e| Error::Internal(format!("starting the import: {e}")))?
}

/// A refusal about the import recorded under the request id, with its id in ErrorInfo's
/// metadata (`import_id`) for `GetImport`.
fn about(e: Error, import: Option<&str>) -> Status {
    match import {
        Some(id) => contactier_runtime::rich::with_info(Status::from(e), "import_id", id),
        None => Status::from(e),
    }
}

async fn begin(
    ctx: Importer,
    account: String,
    user: String,
    opened: Opened,
    input: Streaming<pb::ImportContactsRequest>,
) -> std::result::Result<BoxStream<'static, Progress>, Status> {
    let Opened { header, plan, catalog } = opened;
    let mut import = ImportRow {
        id: new_id(),
        name: header.name.clone(),
        mode: plan.mode.as_str().into(),
        state: "running".into(),
        request_id: header.request_id.clone(),
        request_digest: if header.request_id.is_empty() {
            String::new()
        } else {
            contactier_runtime::idempotency::digest(
                "ImportContacts",
                &user,
                &pb::ImportHeader { request_id: String::new(), ..header.clone() },
            )
        },
        started_at: micros(ctx.clock.now()),
        ..ImportRow::default()
    };
    let resumed = match ctx.store.start_import(&account, &import, LEASE).await? {
        Start::Fresh(recorded) => {
            import = recorded;
            false
        }
        Start::Finished(earlier) => {
            // The retry of a finished import gets its summary, if it sends the same file.
            if !earlier.file_digest.is_empty()
                && import_file::digest(input, IDLE).await? != earlier.file_digest
            {
                return Err(about(Error::RequestReused, Some(&earlier.id)));
            }
            let done =
                pb::ImportContactsResponse { progress: Some(convert::import_summary(&earlier)), done: true };
            return Ok(futures::stream::iter([Ok(done)]).boxed());
        }
        Start::Resume(earlier) => {
            import = earlier;
            true
        }
        Start::Reused(id) => return Err(about(Error::RequestReused, Some(&id))),
        Start::Busy(id) => {
            let e = Error::Aborted(
                "an import with this request id is running; retry once it has finished".into(),
            );
            return Err(about(e, id.as_deref()));
        }
    };
    tracing::info!(import = %import.id, mode = import.mode, resumed, skip = import.rows_read, "import started");
    let (tx, rx) = tokio::sync::mpsc::channel::<Progress>(16);
    tokio::spawn(async move {
        let lease = Lease::new(&ctx.store, &account, &import);
        // Every batch is written as the import's owner: one a takeover has replaced writes nothing.
        let ctx = Importer { store: ctx.store.owned_by(lease.owner.clone()), ..ctx };
        // Stopped between beats rather than aborted: no beat's statement is given up in flight.
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let beats = {
            let lease = lease.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(BEAT);
                loop {
                    tokio::select! {
                        biased;
                        _ = &mut stopped => break,
                        _ = every.tick() => {}
                    }
                    match lease.beat().await {
                        Ok(()) => {}
                        // Taken over: the writer finds it so before its next batch.
                        Err(Error::Aborted(_)) => break,
                        Err(e) => {
                            tracing::warn!(import = %lease.owner.import, error = %e, "marking the import alive failed");
                        }
                    }
                }
            })
        };
        let mut outcome =
            run(&ctx, &account, &user, &plan, &catalog, &mut import, resumed, input, &tx, &lease).await;
        drop(stop);
        let _ = beats.await;
        if outcome.is_err() && !lease.lost() {
            // Counters back to the last saved batch: rows read since were not written, and a
            // retry reads them again.
            match ctx.store.import(&account, &import.id).await {
                Ok(Some(saved)) => import = saved,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(import = %import.id, error = %e, "reading the import's progress failed");
                }
            }
        }
        import.finished_at = micros(ctx.clock.now());
        import.state = if outcome.is_ok() { "completed" } else { "failed" }.into();
        if let Err(e) = &outcome {
            tracing::warn!(import = %import.id, error = %e, "import failed");
        }
        // An owner that lost its import to a resend leaves its record to the resend.
        if !lease.lost() {
            match lease.save(&import).await {
                Ok(()) => {}
                Err(e @ Error::Aborted(_)) => outcome = Err(e),
                Err(e) => tracing::warn!(import = %import.id, error = %e, "saving the import's end failed"),
            }
        }
        // Whatever its writer met meanwhile (its batch's session ended by the takeover reads
        // as storage unavailable), a lost import goes on elsewhere, and its client is told so
        // rather than to retry.
        if lease.lost() {
            outcome = Err(Error::Aborted(TAKEN_OVER.into()));
        }
        tracing::info!(import = %import.id, rows = import.rows_read, created = import.created, updated = import.updated, skipped = import.skipped, failed = import.failed, "import ended");
        let last = match outcome {
            Ok(()) => Ok(pb::ImportContactsResponse {
                progress: Some(convert::import_summary(&import)),
                done: true,
            }),
            Err(e) => {
                // Said after the answer began, so in the trailers: with the details a refusal
                // before it would carry, and the import's id to look it up by (in the message
                // and in ErrorInfo's metadata, `import_id`).
                let e = match e {
                    Error::Aborted(m) if import.request_id.is_empty() => {
                        Error::Aborted(format!("{m} (import {})", import.id))
                    }
                    Error::Aborted(m) => Error::Aborted(format!(
                        "{m} (import {}; the same file sent again under the same request id takes it up)",
                        import.id
                    )),
                    e => e,
                };
                Err(contactier_runtime::rich::with_info(Status::from(e), "import_id", &import.id))
            }
        };
        let _ = tx.send(last).await;
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

/// Rows read and checked, ready to be written: the reader cuts them from the file while the
/// batch before them is written.
struct Batch {
    rows: Vec<Row>,
    /// The batch's rows refused by their checks.
    errors: Vec<ImportErrorRow>,
    read: i64,
    failed: i64,
    /// The file's digest through the batch's last row.
    digest: String,
    /// The file ends with this batch.
    last: bool,
}

/// Batches a reader has cut and the writer has not taken: one waits while another is written.
const BATCHES_AHEAD: usize = 1;

#[allow(clippy::too_many_arguments)]
async fn run(
    ctx: &Importer,
    account: &str,
    user: &str,
    plan: &Plan,
    catalog: &Catalog,
    import: &mut ImportRow,
    resumed: bool,
    input: Streaming<pb::ImportContactsRequest>,
    progress: &tokio::sync::mpsc::Sender<Progress>,
    lease: &Lease,
) -> Result<()> {
    let (batches, mut cut) = tokio::sync::mpsc::channel::<Result<Batch>>(BATCHES_AHEAD);
    // The file is read and checked on a task of its own, so that the service's CPU time for one
    // batch and the database's for the one before run side by side. It ends when the writer
    // stops taking batches.
    let reader = tokio::spawn(read_batches(
        input,
        plan.clone(),
        catalog.clone(),
        import.rows_read,
        import.prefix_digest.clone(),
        batches,
    ));
    let _reader = AbortOnDrop(reader);
    let mut analyzed_at = 0;
    // A resumed import skips the rows its saved progress covers; the batch after them may have
    // been written without its progress saved.
    let mut recheck = resumed;
    loop {
        // A call cut (its client gone) ends the import at the batch it wrote last, rather than
        // writing what had arrived, or waiting for an end that will not come, while a resend is
        // told it runs.
        let batch = tokio::select! {
            biased;
            () = progress.closed() => return Err(Error::Aborted("the call was cut off".into())),
            batch = cut.recv() => batch,
        };
        let Some(batch) = batch else { break };
        let Batch { rows, mut errors, read, failed, digest, last } = batch?;
        let listed = import.failed + import.skipped;
        // Nothing more is written by an owner whose import a resend took over.
        lease.beat().await?;
        import.rows_read += read;
        import.failed += failed;
        write(ctx, account, user, plan, import, rows, &mut errors, recheck).await?;
        recheck = false;
        ctx.store.add_import_errors(account, &import.id, &to_list(errors, listed)).await?;
        import.prefix_digest = digest;
        if last {
            // The import's end saves it.
            import.file_digest = import.prefix_digest.clone();
            return Ok(());
        }
        // A table that grew from nothing during the import has statistics that say it is
        // empty; the planner would then scan it for every lookup.
        if import.rows_read - analyzed_at >= STATISTICS_EVERY {
            ctx.store.refresh_statistics().await?;
            analyzed_at = import.rows_read;
        }
        lease.save(import).await?;
        let _ = progress
            .send(Ok(pb::ImportContactsResponse {
                progress: Some(convert::import_summary(import)),
                done: false,
            }))
            .await;
    }
    Err(Error::Aborted("the import's reader stopped".into()))
}

/// An import's hold on its record: the owner's token and beats, shared by the task that beats
/// and the writer. A resend takes an import over once its owner has not beaten for [`LEASE`]
/// (its process paused or gone); the owner then finds its token replaced and writes nothing more.
#[derive(Clone)]
struct Lease {
    store: Store,
    owner: Owner,
    beat: std::sync::Arc<tokio::sync::Mutex<Beat>>,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Lease {
    fn new(store: &Store, account: &str, import: &ImportRow) -> Self {
        Self {
            store: store.clone(),
            owner: Owner {
                account: account.to_owned(),
                import: import.id.clone(),
                token: import.owner.clone(),
            },
            beat: std::sync::Arc::new(tokio::sync::Mutex::new(Beat::new(import.heartbeat_at))),
            lost: std::sync::Arc::default(),
        }
    }

    fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn taken_over(&self) -> Error {
        self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::warn!(import = %self.owner.import, "the import was taken over, or failed as stalled");
        Error::Aborted(TAKEN_OVER.into())
    }

    /// Marks the import alive; ABORTED when another took it over.
    async fn beat(&self) -> Result<()> {
        let mut beat = self.beat.lock().await;
        match self.store.beat_import(&self.owner, &mut beat).await? {
            true => Ok(()),
            false => Err(self.taken_over()),
        }
    }

    /// Saves the import's counters and state; ABORTED, saving nothing, when another took it over.
    async fn save(&self, import: &ImportRow) -> Result<()> {
        let mut beat = self.beat.lock().await;
        match self.store.save_import(&self.owner, &mut beat, import).await? {
            true => Ok(()),
            false => Err(self.taken_over()),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the file and cuts it into checked batches for the writer, the last (possibly empty)
/// marked so; a file that broke off sends its error instead.
/// `done_before` rows, the saved progress of an import taken up again, are skipped.
async fn read_batches(
    input: Streaming<pb::ImportContactsRequest>,
    plan: Plan,
    catalog: Catalog,
    done_before: i64,
    prefix_digest: String,
    batches: tokio::sync::mpsc::Sender<Result<Batch>>,
) {
    if let Err(e) = cut_batches(input, &plan, &catalog, done_before, &prefix_digest, &batches).await {
        let _ = batches.send(Err(e)).await;
    }
}

async fn cut_batches(
    input: Streaming<pb::ImportContactsRequest>,
    plan: &Plan,
    catalog: &Catalog,
    done_before: i64,
    prefix_digest: &str,
    batches: &tokio::sync::mpsc::Sender<Result<Batch>>,
) -> Result<()> {
    // A client that stops sending without closing its stream would hold the import forever.
    let bytes = import_file::bytes(input, IDLE);
    let (headers, mut records) = open_csv(tokio_util::io::StreamReader::new(bytes), plan).await?;
    let empty = || Batch {
        rows: Vec::with_capacity(BATCH_ROWS),
        errors: Vec::new(),
        read: 0,
        failed: 0,
        digest: String::new(),
        last: false,
    };
    let mut batch = empty();
    let mut batch_bytes = 0;
    let mut number = 0;
    loop {
        let record = match records.next().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            // The file did not arrive whole (or the stream broke its rules). A retry takes it up.
            Err(e) => {
                return Err(match import_file::Arrival::of(&e) {
                    Some(a) if !a.retry() => a.to_error(),
                    _ => Error::Aborted(format!("the file stopped arriving at row {}: {e}", number + 1)),
                });
            }
        };
        number += 1;
        if number <= done_before {
            // A retry taking the import up again sends the file it began with.
            if number == done_before && !prefix_digest.is_empty() && records.digest() != prefix_digest {
                return Err(Error::RequestReused);
            }
            continue;
        }
        batch.read += 1;
        match record {
            Record::Fields(r) => match check_row(number, &headers, &r, plan, catalog) {
                Ok(row) => {
                    batch_bytes +=
                        row.email.address.len() + row.values.values().map(|v| v.text.len()).sum::<usize>();
                    batch.rows.push(row);
                }
                Err(e) => {
                    batch.failed += 1;
                    batch.errors.extend(e);
                }
            },
            Record::Refused { field, reason } => {
                // A record past the caps or not UTF-8: reported, the rest goes on.
                batch.failed += 1;
                let column = field.and_then(|f| headers.get(f)).cloned().unwrap_or_default();
                batch.errors.push(ImportErrorRow {
                    row_number: number,
                    column_name: column,
                    reason: format!("CSV: {reason}"),
                });
            }
        }
        // Cut by the rows read, refused ones too: a file of refused rows held every one of
        // their errors in one batch until its end (hundreds of megabytes for a large file).
        if batch.read as usize >= BATCH_ROWS || batch_bytes >= BATCH_BYTES {
            batch_bytes = 0;
            batch.digest = records.digest();
            if batches.send(Ok(std::mem::replace(&mut batch, empty()))).await.is_err() {
                return Ok(());
            }
        }
    }
    if number < done_before {
        return Err(Error::RequestReused);
    }
    batch.digest = records.digest();
    batch.last = true;
    let _ = batches.send(Ok(batch)).await;
    Ok(())
}

/// Writes one batch: creates and updates as the mode says; a later row for an email earlier in
/// the batch updates it after it (upsert and update), so that each value it names is kept in the
/// property history in file order, or is refused as a duplicate (create).
#[allow(clippy::too_many_arguments)]
async fn write(
    ctx: &Importer,
    account: &str,
    user: &str,
    plan: &Plan,
    import: &mut ImportRow,
    rows: Vec<Row>,
    errors: &mut Vec<ImportErrorRow>,
    recheck: bool,
) -> Result<()> {
    let mut rounds: Vec<Vec<Row>> = Vec::new();
    // Per email: its row number and how often it came.
    let mut seen: HashMap<String, (i64, usize)> = HashMap::new();
    for row in rows {
        let round = match seen.get_mut(&row.email.key) {
            Some((first, _)) if plan.mode == Mode::Create => {
                import.failed += 1;
                errors.push(ImportErrorRow {
                    row_number: row.number,
                    column_name: email_column(plan),
                    reason: format!("the email of row {first} again"),
                });
                continue;
            }
            Some((_, times)) => {
                *times += 1;
                *times - 1
            }
            None => {
                seen.insert(row.email.key.clone(), (row.number, 1));
                0
            }
        };
        if rounds.len() == round {
            rounds.push(Vec::new());
        }
        rounds[round].push(row);
    }
    let mut created = HashSet::new();
    for (i, round) in rounds.into_iter().enumerate() {
        // Only the first round can hold rows written before a cut: later ones update them.
        write_round(ctx, account, user, plan, import, round, errors, recheck && i == 0, &mut created).await?;
    }
    Ok(())
}

/// Writes rows of distinct emails. With `recheck` (the first round of a resumed import's first
/// batch), contacts these very rows created before the cut are counted as their creations again
/// rather than as found. `created` gathers the contacts the batch created, which a later round's update does
/// not ask marketing-status about again.
#[allow(clippy::too_many_arguments)]
async fn write_round(
    ctx: &Importer,
    account: &str,
    user: &str,
    plan: &Plan,
    import: &mut ImportRow,
    order: Vec<Row>,
    errors: &mut Vec<ImportErrorRow>,
    recheck: bool,
    created: &mut HashSet<String>,
) -> Result<()> {
    if order.is_empty() {
        return Ok(());
    }
    // Create-only imports need no lookup: the insert itself finds the emails taken.
    let existing = if plan.mode == Mode::Create {
        HashMap::new()
    } else {
        let keys: Vec<String> = order.iter().map(|r| r.email.key.clone()).collect();
        ctx.store.ids_by_email(account, &keys).await?
    };
    let ours = if recheck {
        let keys: Vec<String> = order.iter().map(|r| r.email.key.clone()).collect();
        ctx.store.created_by_import(account, &import.id, &keys).await?
    } else {
        HashMap::new()
    };
    let now = ctx.clock.now();
    let (mut creates, mut updates) = (Vec::new(), Vec::new());
    let mut opted_in: Vec<String> = Vec::new();
    for row in order {
        // Created by this very row before the cut, its progress not saved: a contact the
        // import made from an earlier row is found as any other is.
        if let Some((id, _)) = ours.get(&row.email.key).filter(|(_, made_by)| *made_by == row.number) {
            import.created += 1;
            if row.opt_in {
                opted_in.push(id.clone());
            }
            created.insert(id.clone());
            continue;
        }
        match (existing.get(&row.email.key), plan.mode) {
            (Some(_), Mode::Create) => {
                import.skipped += 1;
                errors.push(ImportErrorRow {
                    row_number: row.number,
                    column_name: email_column(plan),
                    reason: "skipped: a contact with this email exists".into(),
                });
            }
            (None, Mode::Update) => {
                import.skipped += 1;
                errors.push(ImportErrorRow {
                    row_number: row.number,
                    column_name: email_column(plan),
                    reason: "skipped: no contact has this email".into(),
                });
            }
            (Some(id), _) => updates.push((id.clone(), row)),
            (None, _) => creates.push(row),
        }
    }
    if !creates.is_empty() {
        let requested = if plan.set_as_marketing {
            common::MarketingStatus::Marketing
        } else {
            common::MarketingStatus::Unspecified
        };
        let news: Vec<NewContact> = creates
            .iter()
            .map(|r| NewContact {
                email: r.email.clone(),
                values: r.values.clone(),
                source_type: source_type_name(common::SourceType::Import),
                source_id: import.id.clone(),
                source_row: r.number,
                requested_status: requested as i32,
                user_id: user.to_owned(),
            })
            .collect();
        let mut taken: Vec<Row> = Vec::new();
        let mut raced: Vec<Row> = Vec::new();
        let outcomes = ctx.store.create_contacts(account, news, now, None).await?.unwrap_or_default();
        for (row, outcome) in creates.into_iter().zip(outcomes) {
            match outcome {
                Ok(c) => {
                    import.created += 1;
                    if row.opt_in {
                        opted_in.push(c.id.clone());
                    }
                    created.insert(c.id);
                }
                Err(Error::EmailTaken(_)) if plan.mode == Mode::Create => taken.push(row),
                // Created by someone else (another import of the same file, say) since the
                // lookup: an upsert updates it.
                Err(Error::EmailTaken(_)) => raced.push(row),
                Err(e) => {
                    import.failed += 1;
                    errors.push(ImportErrorRow {
                        row_number: row.number,
                        column_name: email_column(plan),
                        reason: e.to_string(),
                    });
                }
            }
        }
        if !taken.is_empty() {
            refuse_taken(ctx, account, plan, import, &taken, errors).await?;
        }
        if !raced.is_empty() {
            let keys: Vec<String> = raced.iter().map(|r| r.email.key.clone()).collect();
            let ids = ctx.store.ids_by_email(account, &keys).await?;
            for row in raced {
                if let Some(id) = ids.get(&row.email.key) {
                    updates.push((id.clone(), row));
                } else {
                    // Gone again before this second look: nothing to update, nothing made.
                    import.failed += 1;
                    errors.push(ImportErrorRow {
                        row_number: row.number,
                        column_name: email_column(plan),
                        reason: "the contact with this email was deleted while it was imported".into(),
                    });
                }
            }
        }
        ctx.relay.wake();
    }
    if !updates.is_empty() {
        let changes = updates
            .iter()
            .map(|(id, r)| Change {
                id: id.clone(),
                values: r.values.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect(),
                email: None,
                expected_version: 0,
            })
            .collect();
        let mut marketing = Vec::new();
        let origin =
            Origin { source_type: "IMPORT".into(), source_id: import.id.clone(), user_id: user.to_owned() };
        for ((id, row), outcome) in
            updates.iter().zip(ctx.store.update_contacts(account, changes, &origin, || now).await?)
        {
            match outcome {
                Ok(_) => {
                    import.updated += 1;
                    if !created.contains(id) {
                        marketing.push(id.clone());
                    }
                    if row.opt_in {
                        opted_in.push(id.clone());
                    }
                }
                Err(e) => {
                    import.failed += 1;
                    errors.push(ImportErrorRow {
                        row_number: row.number,
                        column_name: email_column(plan),
                        reason: e.to_string(),
                    });
                }
            }
        }
        // "Set as marketing" reaches contacts that existed through marketing-status, as the
        // importing user.
        if plan.set_as_marketing && !marketing.is_empty() {
            ctx.store.request_marketing(account, &marketing, &import.id, user, now).await?;
            ctx.relay.wake();
        }
    }
    let consent = ConsentRow {
        legal_basis: plan.legal_basis.clone(),
        opted_in_at: micros(now),
        subscription_types: "[]".into(),
        unsubscribed_from_all: false,
    };
    for id in opted_in {
        ctx.store.set_consent(account, &id, &consent, micros(now)).await?;
    }
    Ok(())
}

/// Rows of a create-only import whose email a contact has: a repeat of an address this import
/// created from an earlier batch is refused as a repeat within its batch is (failed), any other
/// is skipped.
async fn refuse_taken(
    ctx: &Importer,
    account: &str,
    plan: &Plan,
    import: &mut ImportRow,
    taken: &[Row],
    errors: &mut Vec<ImportErrorRow>,
) -> Result<()> {
    let keys: Vec<String> = taken.iter().map(|r| r.email.key.clone()).collect();
    let ours = ctx.store.created_by_import(account, &import.id, &keys).await?;
    for row in taken {
        let reason = if ours.contains_key(&row.email.key) {
            import.failed += 1;
            "the email of an earlier row again".to_owned()
        } else {
            import.skipped += 1;
            "skipped: a contact with this email exists".to_owned()
        };
        errors.push(ImportErrorRow { row_number: row.number, column_name: email_column(plan), reason });
    }
    Ok(())
}

fn email_column(plan: &Plan) -> String {
    plan.mapping.iter().find(|(_, p)| *p == "email").map(|(c, _)| c.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(mapping: &[(&str, &str)]) -> pb::ImportHeader {
        pb::ImportHeader {
            mode: pb::ImportMode::Upsert as i32,
            column_mapping: mapping.iter().map(|(c, p)| (c.to_string(), p.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_plan_maps_exactly_one_column_to_email_and_known_properties() {
        let catalog = Catalog::new(vec![]);
        assert!(plan(&header(&[("Email", "email"), ("First", "first_name")]), &catalog).is_ok());
        let e = plan(&header(&[("First", "first_name")]), &catalog).unwrap_err();
        assert_eq!(e.field(), "header.column_mapping");
        let e = plan(&header(&[("Email", "email"), ("Size", "shoe_size")]), &catalog).unwrap_err();
        assert_eq!(e.field(), "header.column_mapping.Size");
        let e = plan(&pb::ImportHeader { mode: 0, ..header(&[("Email", "email")]) }, &catalog).unwrap_err();
        assert_eq!(e.field(), "header.mode");
        let e = plan(&pb::ImportHeader { delimiter: ";;".into(), ..header(&[("Email", "email")]) }, &catalog)
            .unwrap_err();
        assert_eq!(e.field(), "header.delimiter");
    }

    #[test]
    fn an_import_lists_its_first_refused_rows_with_their_reasons_cut_short() {
        let e = |row: i64, column: &str, reason: &str| ImportErrorRow {
            row_number: row,
            column_name: column.into(),
            reason: reason.into(),
        };
        let long = "é".repeat(LISTED_REASON + 5);
        let batch = vec![e(9, "b", "x"), e(7, "a", &long), e(9, "a", "y"), e(8, "", "z")];
        // Two rows' room left: rows 7 and 8, not 9.
        let kept = to_list(batch.clone(), LISTED_ROWS - 2);
        let rows: Vec<i64> = kept.iter().map(|e| e.row_number).collect();
        assert_eq!(rows, [7, 8]);
        assert_eq!(kept[0].reason.chars().count(), LISTED_REASON + 1);
        assert!(kept[0].reason.ends_with('…'));
        assert_eq!(to_list(batch.clone(), 0).len(), 4, "every error of a listed row");
        assert!(to_list(batch, LISTED_ROWS).is_empty());
    }

    #[test]
    fn a_row_is_refused_with_every_bad_column_named() {
        let catalog = Catalog::new(vec![]);
        let mut h = header(&[("Email", "email"), ("Stage", "lifecycle_stage")]);
        h.gdpr_opt_in_column = "OptIn".into();
        let p = plan(&h, &catalog).unwrap();
        let headers: Vec<String> = ["Email", "Stage", "OptIn"].map(String::from).to_vec();
        let rec = |v: &[&str]| v.iter().map(std::string::ToString::to_string).collect::<Vec<String>>();
        let ok = rec(&["Ada@Example.com", "customer", "yes"]);
        let row = check_row(1, &headers, &ok, &p, &catalog).unwrap();
        assert_eq!((row.email.key.as_str(), row.opt_in), ("ada@example.com", true));
        assert_eq!(row.values["lifecycle_stage"].text, "customer");
        let bad = rec(&["not-an-email", "alien", "perhaps"]);
        let errors = check_row(7, &headers, &bad, &p, &catalog).unwrap_err();
        let columns: Vec<_> = errors.iter().map(|e| (e.row_number, e.column_name.as_str())).collect();
        assert_eq!(columns, [(7, "Email"), (7, "Stage"), (7, "OptIn")]);
        let short = rec(&["b@example.com"]);
        assert!(check_row(8, &headers, &short, &p, &catalog).is_err());
    }
}
