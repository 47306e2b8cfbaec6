//! What a storage error says about the database: down for everyone, a conflict with a
//! concurrent change, or a statement refused for what it wrote. Callers retry the first two;
//! a refusal comes back the same however often it is retried (a constraint or trigger failing
//! on one account's data), so it is not answered as an outage: a relay would otherwise take
//! one account's poison event for its receiver being down and hold every account's events.

/// The kind of a storage failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The database cannot answer for now (gone, busy, out of room, shutting down): retry.
    Down,
    /// The transaction lost to a concurrent one (serialization, deadlock, a key taken
    /// meanwhile): retry the whole request.
    Conflict,
    /// The database refused the statement itself: retrying sends the same and fails the same.
    Refused,
}

/// The kind of `e`.
pub fn of(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::Database(db) => {
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                db.code().and_then(|c| c.parse().ok()).map_or(Failure::Refused, of_sqlite)
            } else {
                db.code().map_or(Failure::Refused, |c| of_sqlstate(&c))
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed
        // A connection whose transaction state is off: the connection's trouble, not the
        // statement's (see `db::ended_cleanly`).
        | sqlx::Error::InvalidSavePointStatement => Failure::Down,
        _ => Failure::Refused,
    }
}

/// PostgreSQL's SQLSTATE (appendix A of its manual): connection (08), resources (53), operator
/// intervention such as a shutdown (57), system (58), a server turned read-only by a failover;
/// transaction rollback (40), unique violation, and a lock not had or a statement not done in
/// its time (held up by another session's work: the database is there) are conflicts.
pub fn of_sqlstate(code: &str) -> Failure {
    match code {
        "23505" | "55P03" | "57014" => Failure::Conflict,
        "25006" => Failure::Down,
        _ => match code.get(..2) {
            Some("08" | "53" | "57" | "58") => Failure::Down,
            Some("40") => Failure::Conflict,
            _ => Failure::Refused,
        },
    }
}

/// SQLite's extended result code (its low byte the primary one): busy, locked, out of memory,
/// interrupted, I/O, disk full, cannot open, read-only, lock protocol are the database's state;
/// a unique or primary key taken is a conflict.
pub fn of_sqlite(code: i32) -> Failure {
    const UNIQUE: i32 = 2067;
    const PRIMARY_KEY: i32 = 1555;
    match code {
        UNIQUE | PRIMARY_KEY => Failure::Conflict,
        _ => match code & 0xff {
            5 | 6 | 7 | 8 | 9 | 10 | 13 | 14 | 15 => Failure::Down,
            _ => Failure::Refused,
        },
    }
}

/// The answer to a storage failure: the detail goes to the log, the caller gets a code that
/// says whether to retry.
pub fn status(e: &sqlx::Error) -> tonic::Status {
    let kind = of(e);
    // A conflict or a hold-up is the caller's to retry, expected under contention: a warning.
    if kind == Failure::Conflict {
        tracing::warn!(error = %e, kind = ?kind, "storage error");
    } else {
        tracing::error!(error = %e, kind = ?kind, "storage error");
    }
    match kind {
        Failure::Down => tonic::Status::unavailable("storage unavailable, retry"),
        Failure::Conflict if lock_held(e) => held_up(LOCK_HELD_UP, HELD_BY_LOCK),
        Failure::Conflict if statement_past_time(e) => held_up(STATEMENT_HELD_UP, HELD_BY_STATEMENT),
        Failure::Conflict => tonic::Status::aborted("storage: conflicted with a concurrent change; retry"),
        Failure::Refused => tonic::Status::internal("storage refused the change"),
    }
}

/// ABORTED with its own `ErrorInfo` reason, so a caller (a relay deciding how soon to retry)
/// tells a held row from a slow statement without reading the message.
pub(crate) fn held_up(message: &str, reason: &str) -> tonic::Status {
    crate::rich::status(tonic::Code::Aborted, message, tonic_types::ErrorDetails::new(), reason)
}

/// The answer to work that waited past its time for a row another session holds.
pub const LOCK_HELD_UP: &str =
    "storage held up: a row another session holds was waited for past its time; retry";
/// Its `ErrorInfo` reason.
pub const HELD_BY_LOCK: &str = "HELD_UP_BY_LOCK";
/// The answer to work whose statement ran past its time (a slow trigger, say): retried, it
/// takes that time again.
pub const STATEMENT_HELD_UP: &str = "storage held up: a statement ran past its time; retry";
/// Its `ErrorInfo` reason.
pub const HELD_BY_STATEMENT: &str = "HELD_UP_BY_STATEMENT";

/// Whether `s` answered work whose statement ran past its time, by its `ErrorInfo` reason.
pub fn statement_held_up(s: &tonic::Status) -> bool {
    use tonic_types::StatusExt as _;
    s.code() == tonic::Code::Aborted
        && s.get_details_error_info().is_some_and(|i| i.reason == HELD_BY_STATEMENT)
}

/// Whether `e` is a lock waited for past `lock_timeout` (PostgreSQL).
pub(crate) fn lock_held(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}

/// Whether `e` is a statement run past `statement_timeout` (PostgreSQL).
fn statement_past_time(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("57014"))
}

/// The gRPC code name of [`status`], for per-record results.
pub fn code_name(e: &sqlx::Error) -> &'static str {
    match of(e) {
        Failure::Down => "UNAVAILABLE",
        Failure::Conflict => "ABORTED",
        Failure::Refused => "INTERNAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_outages_are_told_from_refused_statements() {
        for down in ["08006", "08001", "53300", "57P01", "57P03", "58030", "25006"] {
            assert_eq!(of_sqlstate(down), Failure::Down, "{down}");
        }
        for conflict in ["40001", "40P01", "23505", "55P03", "57014"] {
            assert_eq!(of_sqlstate(conflict), Failure::Conflict, "{conflict}");
        }
        // A trigger's RAISE, check, not-null and foreign key, bad data, a table missing.
        for refused in ["P0001", "23514", "23502", "23503", "22P02", "22021", "42P01", "XX000", ""] {
            assert_eq!(of_sqlstate(refused), Failure::Refused, "{refused:?}");
        }
    }

    #[test]
    fn sqlite_outages_are_told_from_refused_statements() {
        // SQLITE_BUSY, BUSY_SNAPSHOT, LOCKED, IOERR_WRITE, FULL, CANTOPEN, READONLY.
        for down in [5, 517, 6, 778, 13, 14, 8] {
            assert_eq!(of_sqlite(down), Failure::Down, "{down}");
        }
        assert_eq!(of_sqlite(2067), Failure::Conflict);
        assert_eq!(of_sqlite(1555), Failure::Conflict);
        // A trigger's RAISE(ABORT), CHECK, NOT NULL, a generic SQL error, a value too big.
        for refused in [1811, 275, 1299, 1, 18, 19] {
            assert_eq!(of_sqlite(refused), Failure::Refused, "{refused}");
        }
    }

    #[test]
    fn a_connection_lost_is_an_outage_and_a_row_missing_is_not() {
        assert_eq!(of(&sqlx::Error::PoolTimedOut), Failure::Down);
        assert_eq!(of(&sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into())), Failure::Down);
        assert_eq!(of(&sqlx::Error::InvalidSavePointStatement), Failure::Down);
        assert_eq!(of(&sqlx::Error::RowNotFound), Failure::Refused);
        assert_eq!(status(&sqlx::Error::PoolClosed).code(), tonic::Code::Unavailable);
        assert_eq!(status(&sqlx::Error::RowNotFound).code(), tonic::Code::Internal);
    }
}
