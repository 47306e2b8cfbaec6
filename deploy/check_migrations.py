"""Refuses PostgreSQL migrations that are not safe while older replicas still serve.

A rolling deploy runs a new version's migrations while the old version's pods take traffic,
so a migration must not block their reads and writes for long nor change what they rely on:
- an index on an existing table is built CONCURRENTLY, in a file that starts with
  `-- no-transaction` (PostgreSQL cannot build one concurrently inside a transaction);
- no column changes type, no NOT NULL is set, no constraint is added without NOT VALID on an
  existing table (each takes a lock for a whole rewrite or scan);
- no column or table is dropped or renamed, and no column gets a volatile default (which
  rewrites the table);
- no VACUUM FULL, CLUSTER or REINDEX without CONCURRENTLY.

A statement that is safe all the same says why on the line before it:
`-- safe: <reason>`. Migrations that shipped before this check are left as they are (BASELINE).

Usage: python3 deploy/check_migrations.py [DIR ...]
"""

import re
import sys
from pathlib import Path

# The last migration of each directory that shipped before this check.
BASELINE = {
    "libs/runtime/migrations/postgres": 1,
    "services/contacts/migrations/postgres": 3,
    "services/marketing-status/migrations/postgres": 6,
    "services/billing/migrations/postgres": 3,
    "services/notification/migrations/postgres": 1,
}

VOLATILE = re.compile(r"\b(now|random|gen_random_uuid|clock_timestamp|uuid_generate_v\d|nextval)\s*\(", re.I)


def statements(sql: str):
    """(statement, comment lines just before it), split at semicolons outside quotes."""
    out, current, comments, quote = [], [], [], False
    for line in sql.splitlines():
        stripped = line.strip()
        if not current and stripped.startswith("--"):
            comments.append(stripped)
            continue
        current.append(line)
        for ch in line:
            if ch == "'":
                quote = not quote
        if not quote and stripped.endswith(";"):
            out.append((" ".join(current), comments))
            current, comments = [], []
    if current:
        out.append((" ".join(current), comments))
    return out


def problems(path: Path, sql: str):
    no_tx = sql.lstrip().startswith("-- no-transaction")
    created = {m.lower() for m in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", sql, re.I)}
    found = []
    for stmt, comments in statements(sql):
        s = " ".join(stmt.split())
        upper = s.upper()
        if any(c.lower().startswith("-- safe:") for c in comments):
            continue
        table = None
        m = re.match(r"(?:CREATE (?:UNIQUE )?INDEX|ALTER TABLE)\b.*?\b(?:ON|TABLE)\s+(?:IF EXISTS\s+)?(\w+)", s, re.I)
        if m:
            table = m.group(1).lower()
        new_table = table in created
        if upper.startswith("CREATE INDEX") or upper.startswith("CREATE UNIQUE INDEX"):
            if not new_table and ("CONCURRENTLY" not in upper or not no_tx):
                found.append(f"{s[:80]}: an index on an existing table is built CONCURRENTLY in a -- no-transaction file")
        if upper.startswith("ALTER TABLE") and not new_table:
            if re.search(r"ALTER COLUMN \w+ (SET DATA )?TYPE", upper):
                found.append(f"{s[:80]}: changing a column's type rewrites the table under lock")
            if "SET NOT NULL" in upper:
                found.append(f"{s[:80]}: SET NOT NULL scans the table under lock")
            if "ADD CONSTRAINT" in upper and "NOT VALID" not in upper:
                found.append(f"{s[:80]}: add the constraint NOT VALID, and validate it apart")
            if re.search(r"\bDROP COLUMN\b|\bRENAME\b", upper):
                found.append(f"{s[:80]}: older replicas still use what is dropped or renamed")
            if "ADD COLUMN" in upper and VOLATILE.search(s):
                found.append(f"{s[:80]}: a volatile default rewrites the table")
        if re.match(r"DROP TABLE", upper) and not new_table:
            found.append(f"{s[:80]}: older replicas still use the table")
        if re.match(r"VACUUM FULL|CLUSTER\b", upper) or (re.match(r"REINDEX", upper) and "CONCURRENTLY" not in upper):
            found.append(f"{s[:80]}: takes the table's lock for the whole run")
    return [f"{path}: {p}" for p in found]


def main(dirs):
    all_found = []
    for d in dirs:
        baseline = BASELINE.get(d, 0)
        for f in sorted(Path(d).glob("*.sql")):
            version = int(f.name.split("_", 1)[0])
            if version <= baseline:
                continue
            all_found += problems(f, f.read_text())
    for p in all_found:
        print(p, file=sys.stderr)
    return 1 if all_found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(BASELINE)))
