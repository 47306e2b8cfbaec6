//! Entry points for fuzzing the parsers that take outside input: an import file and a search
//! filter. The fuzz targets in `fuzz/` and the corpus replay in this crate's tests call these,
//! so every input found is checked by `make test`. Neither may panic, whatever the bytes.

use crate::csv_records::Record;
use crate::filter;
use crate::import::{self, check_row};
use crate::properties::{Catalog, Definition, PropertyOption, PropertyType};
use contactier_proto::contacts::v1 as pb;
use prost::Message;

/// An account's catalog with one custom property of each type beside the standard ones.
pub fn catalog() -> Catalog {
    let def = |name: &str, ptype, options: &[&str]| Definition {
        name: name.into(),
        label: name.into(),
        ptype,
        options: options.iter().map(|o| PropertyOption { value: (*o).into(), label: (*o).into() }).collect(),
        standard: false,
        description: String::new(),
    };
    Catalog::new(vec![
        def("notes", PropertyType::MultiLineText, &[]),
        def("plan", PropertyType::Enumeration, &["free", "paid"]),
        def("seats", PropertyType::Number, &[]),
        def("renewal", PropertyType::Date, &[]),
        def("vip", PropertyType::Checkbox, &[]),
    ])
}

/// What reading a file came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileOutcome {
    pub good: usize,
    pub refused: usize,
    /// The file could not be read as CSV at all (header missing or mapping columns absent).
    pub unreadable: bool,
}

/// Reads `data` as an import file mapping `email`, `first_name`, `lifecycle_stage`, `notes`,
/// `plan`, `seats`, `renewal`, `vip` and the opt-in column `opt_in`; checks every row.
pub fn import_file(data: &[u8]) -> FileOutcome {
    let catalog = catalog();
    let mapping = ["email", "first_name", "lifecycle_stage", "notes", "plan", "seats", "renewal", "vip"];
    let header = pb::ImportHeader {
        mode: pb::ImportMode::Upsert as i32,
        column_mapping: mapping.iter().map(|c| ((*c).to_owned(), (*c).to_owned())).collect(),
        gdpr_opt_in_column: "opt_in".into(),
        ..Default::default()
    };
    let plan = import::plan(&header, &catalog).expect("a valid header");
    futures::executor::block_on(async {
        let Ok((headers, mut records)) = import::open_csv(std::io::Cursor::new(data), &plan).await else {
            return FileOutcome { unreadable: true, ..FileOutcome::default() };
        };
        let mut out = FileOutcome::default();
        let mut number = 0;
        while let Ok(Some(record)) = records.next().await {
            number += 1;
            match record {
                Record::Fields(r) if check_row(number, &headers, &r, &plan, &catalog).is_ok() => {
                    out.good += 1;
                }
                _ => out.refused += 1,
            }
        }
        out
    })
}

/// Decodes `data` as a search filter and compiles it; `Ok` with the SQL's placeholder count,
/// or the field a refusal names.
pub fn search_filter(data: &[u8]) -> Result<usize, String> {
    let f = pb::ContactFilter::decode(data).map_err(|e| format!("decode: {e}"))?;
    let sql = filter::compile(Some(&f), &catalog(), contactier_runtime::db::Backend::Sqlite, 1)
        .map_err(|e| e.field)?;
    Ok(sql.binds.len())
}
