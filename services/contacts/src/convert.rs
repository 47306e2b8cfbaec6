//! Stored records to and from their protobuf form.

use crate::error::{Error, Result};
use crate::properties::{Catalog, Definition, PropertyOption, PropertyType};
use crate::store::{ConsentRow, ContactRow, ImportRow, ListRow};
use contactier_proto::common::v1 as common;
use contactier_proto::contacts::v1 as pb;
use contactier_runtime::convert::timestamp_micros;
use prost::Message;

/// A contact as answered: properties of definitions that still exist, limited to `only` when
/// given.
pub fn contact(row: ContactRow, catalog: &Catalog, only: &[String]) -> pb::Contact {
    let properties = row
        .values()
        .into_iter()
        .filter(|(k, _)| catalog.get(k).is_some() && (only.is_empty() || only.contains(k)))
        .collect();
    let source_type = common::SourceType::from_str_name(&format!("SOURCE_TYPE_{}", row.source_type))
        .unwrap_or(common::SourceType::Unspecified);
    pb::Contact {
        id: row.id,
        email: row.email,
        properties,
        version: row.version,
        creation_source: Some(common::Source { r#type: source_type as i32, id: row.source_id }),
        created_at: timestamp_micros(row.created_at),
        updated_at: timestamp_micros(row.updated_at),
    }
}

pub fn source_type_name(t: common::SourceType) -> String {
    t.as_str_name().trim_start_matches("SOURCE_TYPE_").to_owned()
}

fn pb_type(t: PropertyType) -> pb::PropertyType {
    match t {
        PropertyType::SingleLineText => pb::PropertyType::SingleLineText,
        PropertyType::MultiLineText => pb::PropertyType::MultiLineText,
        PropertyType::Enumeration => pb::PropertyType::Enumeration,
        PropertyType::Number => pb::PropertyType::Number,
        PropertyType::Date => pb::PropertyType::Date,
        PropertyType::Checkbox => pb::PropertyType::Checkbox,
    }
}

pub fn property_type(t: i32) -> Option<PropertyType> {
    Some(match pb::PropertyType::try_from(t).ok()? {
        pb::PropertyType::SingleLineText => PropertyType::SingleLineText,
        pb::PropertyType::MultiLineText => PropertyType::MultiLineText,
        pb::PropertyType::Enumeration => PropertyType::Enumeration,
        pb::PropertyType::Number => PropertyType::Number,
        pb::PropertyType::Date => PropertyType::Date,
        pb::PropertyType::Checkbox => PropertyType::Checkbox,
        pb::PropertyType::Unspecified => return None,
    })
}

pub fn definition(d: &Definition) -> pb::PropertyDefinition {
    pb::PropertyDefinition {
        name: d.name.clone(),
        label: d.label.clone(),
        r#type: pb_type(d.ptype) as i32,
        options: d
            .options
            .iter()
            .map(|o| pb::PropertyOption { value: o.value.clone(), label: o.label.clone() })
            .collect(),
        standard: d.standard,
        description: d.description.clone(),
    }
}

/// Checks a definition from a request; `field` prefixes the field names in errors.
pub fn checked_definition(p: Option<pb::PropertyDefinition>) -> Result<Definition> {
    let p = p.ok_or_else(|| Error::invalid("property", "required"))?;
    crate::properties::check_name(&p.name).map_err(|r| Error::invalid("property.name", r))?;
    let ptype = property_type(p.r#type).ok_or_else(|| {
        Error::invalid(
            "property.type",
            "SINGLE_LINE_TEXT, MULTI_LINE_TEXT, ENUMERATION, NUMBER, DATE or CHECKBOX",
        )
    })?;
    if p.label.trim().is_empty() {
        return Err(Error::invalid("property.label", "required"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, o) in p.options.iter().enumerate() {
        if o.value.trim().is_empty() || o.value.trim() != o.value {
            return Err(Error::invalid(
                format!("property.options[{i}].value"),
                "required, without surrounding spaces",
            ));
        }
        if !seen.insert(o.value.clone()) {
            return Err(Error::invalid(format!("property.options[{i}].value"), "repeated"));
        }
    }
    match (ptype, p.options.is_empty()) {
        (PropertyType::Enumeration, true) => {
            return Err(Error::invalid("property.options", "an enumeration needs options"));
        }
        (t, false) if t != PropertyType::Enumeration => {
            return Err(Error::invalid("property.options", "only enumerations have options"));
        }
        _ => {}
    }
    Ok(Definition {
        name: p.name,
        label: p.label.trim().to_owned(),
        ptype,
        options: p
            .options
            .into_iter()
            .map(|o| PropertyOption {
                label: if o.label.is_empty() { o.value.clone() } else { o.label },
                value: o.value,
            })
            .collect(),
        standard: false,
        description: p.description,
    })
}

pub fn list(row: ListRow, size: i64) -> pb::ContactList {
    let active = row.r#type == "active";
    pb::ContactList {
        id: row.id,
        name: row.name,
        r#type: if active { pb::ListType::Active } else { pb::ListType::Static } as i32,
        filter: if active { pb::ContactFilter::decode(row.filter.as_slice()).ok() } else { None },
        size,
        created_at: timestamp_micros(row.created_at),
    }
}

pub fn consent(c: ConsentRow) -> pb::Consent {
    pb::Consent {
        legal_basis: c.legal_basis,
        opted_in_at: timestamp_micros(c.opted_in_at).filter(|_| c.opted_in_at != 0),
        subscription_types: serde_json::from_str(&c.subscription_types).unwrap_or_default(),
        unsubscribed_from_all: c.unsubscribed_from_all,
    }
}

pub fn import_summary(i: &ImportRow) -> pb::ImportSummary {
    let state = match i.state.as_str() {
        "running" => pb::ImportState::Running,
        "completed" => pb::ImportState::Completed,
        "failed" => pb::ImportState::Failed,
        _ => pb::ImportState::Unspecified,
    };
    pb::ImportSummary {
        import_id: i.id.clone(),
        state: state as i32,
        rows_read: i.rows_read,
        created: i.created,
        updated: i.updated,
        skipped: i.skipped,
        failed: i.failed,
        started_at: timestamp_micros(i.started_at),
        finished_at: timestamp_micros(i.finished_at).filter(|_| i.finished_at != 0),
    }
}
