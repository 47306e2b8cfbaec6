//! Writes `impl Check` for every Contactier message from the limits its fields declare
//! (`proto/contactier/common/v1/limits.proto`), with the names prost gives the Rust types.

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost_reflect::{DescriptorPool, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor, Value};
use std::collections::HashSet;
use std::fmt::Write;

/// Messages whose checks are written by hand in `src/checks.rs`.
const HAND_WRITTEN: &[&str] = &["contactier.common.v1.Date"];

struct Limits {
    max_len: Option<u64>,
    max_items: Option<u64>,
    min: Option<i64>,
    max: Option<i64>,
    per_item: bool,
}

struct Extensions {
    max_len: ExtensionDescriptor,
    max_items: ExtensionDescriptor,
    min: ExtensionDescriptor,
    max: ExtensionDescriptor,
    per_item: ExtensionDescriptor,
}

impl Extensions {
    fn new(pool: &DescriptorPool) -> Self {
        let ext = |n: &str| {
            pool.get_extension_by_name(&format!("contactier.common.v1.{n}"))
                .unwrap_or_else(|| panic!("limits.proto declares {n}"))
        };
        Self {
            max_len: ext("max_len"),
            max_items: ext("max_items"),
            min: ext("min"),
            max: ext("max"),
            per_item: ext("per_item"),
        }
    }

    fn of(&self, f: &FieldDescriptor) -> Limits {
        let options = f.options();
        let get =
            |e: &ExtensionDescriptor| options.has_extension(e).then(|| options.get_extension(e).into_owned());
        let unsigned = |v: Option<Value>| v.and_then(|v| v.as_u32()).map(u64::from);
        Limits {
            max_len: unsigned(get(&self.max_len)),
            max_items: unsigned(get(&self.max_items)),
            min: get(&self.min).and_then(|v| v.as_i64()),
            max: get(&self.max).and_then(|v| v.as_i64()),
            per_item: get(&self.per_item).and_then(|v| v.as_bool()).unwrap_or(false),
        }
    }
}

fn sanitize(ident: String) -> String {
    const KEYWORDS: &[&str] = &[
        "as", "break", "const", "continue", "else", "enum", "false", "fn", "for", "if", "impl", "in", "let",
        "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "static", "struct", "trait", "true",
        "type", "unsafe", "use", "where", "while", "dyn", "abstract", "become", "box", "do", "final",
        "macro", "override", "priv", "typeof", "unsized", "virtual", "yield", "async", "await", "try", "gen",
    ];
    if KEYWORDS.contains(&ident.as_str()) { format!("r#{ident}") } else { ident }
}

/// The Rust path prost gives a message or enum of `full_name` in `package`, from this crate.
fn rust_path(package: &str, full_name: &str) -> String {
    if let Some(wkt) = full_name.strip_prefix("google.protobuf.") {
        return format!("::prost_types::{wkt}");
    }
    let module = package.strip_prefix("contactier.").expect("a contactier package").replace('.', "::");
    let local = &full_name[package.len() + 1..];
    let parts: Vec<&str> = local.split('.').collect();
    let mut path = format!("crate::{module}");
    for outer in &parts[..parts.len() - 1] {
        path.push_str("::");
        path.push_str(&sanitize(outer.to_snake_case()));
    }
    path.push_str("::");
    path.push_str(&sanitize(parts[parts.len() - 1].to_upper_camel_case()));
    path
}

fn message_path(m: &MessageDescriptor) -> String {
    rust_path(m.package_name(), m.full_name())
}

/// The statements checking one value of `kind` bound to `v` (a reference), at `at`.
fn value_check(kind: &Kind, limits: &Limits, v: &str, at: &str) -> String {
    let int_bounds = |lo: i64, hi: i64| (limits.min.unwrap_or(0).max(lo), limits.max.unwrap_or(hi).min(hi));
    match kind {
        Kind::String => {
            let max = limits.max_len.unwrap_or(256);
            format!("string({v}, {max}, {at})?;")
        }
        // Bytes are bounded by the message size.
        Kind::Bytes | Kind::Bool | Kind::Double | Kind::Float => String::new(),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            let (lo, hi) = int_bounds(i32::MIN.into(), i32::MAX.into());
            format!("integer(i64::from(*{v}), {lo}, {hi}, {at})?;")
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            let (lo, hi) = int_bounds(i64::MIN, i64::MAX);
            format!("integer(*{v}, {lo}, {hi}, {at})?;")
        }
        Kind::Uint32 | Kind::Fixed32 => {
            let hi = limits.max.map_or(u64::from(u32::MAX), |m| m.max(0) as u64);
            format!("unsigned(u64::from(*{v}), {hi}, {at})?;")
        }
        Kind::Uint64 | Kind::Fixed64 => {
            let hi = limits.max.map_or(u64::MAX, |m| m.max(0) as u64);
            format!("unsigned(*{v}, {hi}, {at})?;")
        }
        Kind::Enum(e) => {
            format!("enumeration::<{}>(*{v}, {at})?;", rust_path(e.package_name(), e.full_name()))
        }
        Kind::Message(_) => format!("Check::check({v}, {at})?;"),
    }
}

/// The most items any list RPC answers in one page (`page_size` fields unless they say
/// otherwise); the same as the runtime's `paging::MAX_PAGE`.
const MAX_PAGE_SIZE: i64 = 1_000;

/// The longest page token a list RPC takes unless it says otherwise: a token holds the last
/// item's key, and a key may hold 256 characters of up to four bytes each, base64-encoded.
const MAX_PAGE_TOKEN_LEN: u64 = 4_096;

fn field_check(f: &FieldDescriptor, ext: &Extensions, out: &mut String) {
    let mut limits = ext.of(f);
    let name = f.name();
    if name == "page_size" && limits.max.is_none() {
        limits.max = Some(MAX_PAGE_SIZE);
    }
    if name == "page_token" && limits.max_len.is_none() {
        limits.max_len = Some(MAX_PAGE_TOKEN_LEN);
    }
    let rust = sanitize(name.to_snake_case());
    let at = format!("&at.field({name:?})");
    if f.is_map() {
        let entry = match f.kind() {
            Kind::Message(m) => m,
            _ => unreachable!("a map's kind is its entry"),
        };
        let (key, value) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let max_items = limits.max_items.unwrap_or(1_000);
        let key_check = value_check(&key.kind(), &Limits { max_len: None, ..no_limits() }, "k", "&a");
        let value_check = value_check(&value.kind(), &limits, "v", "&a.key(k)");
        let key_check = if key.kind() == Kind::String { key_check } else { String::new() };
        let _ = writeln!(
            out,
            "{{ let a = at.field({name:?}); items(self.{rust}.len(), {max_items}, &a)?; \
             for (k, v) in &self.{rust} {{ {key_check} {value_check} }} }}"
        );
        return;
    }
    if f.is_list() {
        let max_items = limits.max_items.unwrap_or(1_000);
        let _ = writeln!(out, "items(self.{rust}.len(), {max_items}, {at})?;");
        if !limits.per_item {
            let check = value_check(&f.kind(), &limits, "v", "&a.index(i)");
            if !check.is_empty() {
                let _ = writeln!(
                    out,
                    "{{ let a = at.field({name:?}); for (i, v) in self.{rust}.iter().enumerate() {{ {check} }} }}"
                );
            }
        }
        return;
    }
    match f.kind() {
        Kind::Message(_) => {
            let check = value_check(&f.kind(), &limits, "m", &at);
            let _ = writeln!(out, "if let Some(m) = &self.{rust} {{ {check} }}");
        }
        kind => {
            let check = value_check(&kind, &limits, &format!("&self.{rust}"), &at);
            if !check.is_empty() {
                out.push_str(&check);
                out.push('\n');
            }
        }
    }
}

fn no_limits() -> Limits {
    Limits { max_len: None, max_items: None, min: None, max: None, per_item: false }
}

fn oneof_check(
    m: &MessageDescriptor,
    o: &prost_reflect::OneofDescriptor,
    ext: &Extensions,
    out: &mut String,
) {
    let enum_path = format!(
        "{}::{}",
        {
            let mp = message_path(m);
            let (prefix, last) = mp.rsplit_once("::").expect("a path");
            format!("{prefix}::{}", sanitize(last.to_snake_case()))
        },
        sanitize(o.name().to_upper_camel_case())
    );
    let field = sanitize(o.name().to_snake_case());
    let mut arms = String::new();
    for f in o.fields() {
        let variant = sanitize(f.name().to_upper_camel_case());
        let at = format!("&at.field({:?})", f.name());
        let check = value_check(&f.kind(), &ext.of(&f), "v", &at);
        let binding = if check.is_empty() { "_" } else { "v" };
        let _ = writeln!(arms, "Some({enum_path}::{variant}({binding})) => {{ {check} }}");
    }
    let _ = writeln!(out, "match &self.{field} {{ {arms} None => {{}} }}");
}

/// Rust source of `impl Check` for every message of the Contactier packages in `pool`.
pub fn generate(pool: &DescriptorPool) -> String {
    let ext = Extensions::new(pool);
    let requests: HashSet<String> = pool
        .services()
        .flat_map(|s| s.methods().map(|m| m.input().full_name().to_owned()).collect::<Vec<_>>())
        .collect();
    let mut out = String::new();
    for m in pool.all_messages() {
        if !m.package_name().starts_with("contactier.")
            || m.is_map_entry()
            || HAND_WRITTEN.contains(&m.full_name())
        {
            continue;
        }
        let mut body = String::new();
        for f in m.fields() {
            if f.containing_oneof().is_some_and(|o| !o.is_synthetic()) {
                continue;
            }
            field_check(&f, &ext, &mut body);
        }
        for o in m.oneofs().filter(|o| !o.is_synthetic()) {
            oneof_check(&m, &o, &ext, &mut body);
        }
        let request = requests.contains(m.full_name());
        let at = if body.is_empty() { "_at" } else { "at" };
        let _ = write!(
            out,
            "impl Check for {} {{\n const REQUEST: bool = {request};\n \
             fn check(&self, {at}: &At<'_>) -> Result<(), Violation> {{\n{body} Ok(())\n }}\n}}\n\n",
            message_path(&m)
        );
    }
    out
}
