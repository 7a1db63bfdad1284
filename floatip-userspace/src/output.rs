//! Printing shared by all commands: aligned tables for people (the default), and for programs
//! `-f json` (an array for lists, an object for a single record), `-f yaml`, `-f value` and
//! `-f csv`, as the `openstack` CLI offers them; `-c COLUMN`, `--long` and `--sort-column`
//! choose and order what is shown.

mod formats;

use std::io::Write;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::Value;

use crate::{
    control::{FloatingIp, Pool, Quota, users::User},
    error::fail,
};

/// How records are rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Style {
    #[default]
    Table,
    Json,
    Yaml,
    Value,
    Csv,
}

/// The output options every command takes.
#[derive(Clone, Debug, Default, Args)]
pub struct Format {
    /// Output format.
    #[arg(short = 'f', long = "format", global = true, value_enum, default_value_t = Style::Table)]
    pub style: Style,
    /// Show only this column (a JSON key, e.g. floating_ip_address); repeatable.
    #[arg(short = 'c', long = "column", global = true, value_name = "COLUMN")]
    pub columns: Vec<String>,
    /// In tables, every column rather than the usual ones.
    #[arg(long, global = true)]
    pub long: bool,
    /// Sort lists by this column (a JSON key).
    #[arg(long, global = true, value_name = "COLUMN")]
    pub sort_column: Option<String>,
    /// With --sort-column: largest first.
    #[arg(long, global = true, conflicts_with = "sort_ascending")]
    pub sort_descending: bool,
    /// With --sort-column: smallest first (the default).
    #[arg(long, global = true)]
    pub sort_ascending: bool,
}

impl Format {
    pub fn is_json(&self) -> bool {
        self.style == Style::Json
    }

    /// Whether a table keeps its record type's own columns.
    fn usual_table(&self) -> bool {
        self.style == Style::Table && self.columns.is_empty() && !self.long
    }
}

/// A record that lists print as one table row.
pub trait Record: Serialize {
    const HEADERS: &'static [&'static str];
    fn row(&self) -> Vec<String>;
}

/// Absent values print as `-` so that every row keeps all its columns.
fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn joined(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(",")
    }
}

impl Record for FloatingIp {
    const HEADERS: &'static [&'static str] = &[
        "ID",
        "FLOATING IP",
        "FIXED IP",
        "POOL",
        "PROJECT",
        "INSTANCE",
        "STATUS",
    ];

    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.floating_ip_address.to_string(),
            opt(&self.fixed_ip_address),
            self.pool.clone(),
            opt(&self.project),
            opt(&self.instance),
            self.status.as_str().to_owned(),
        ]
    }
}

impl Record for Pool {
    const HEADERS: &'static [&'static str] = &[
        "NAME",
        "RANGES",
        "EXCLUDES",
        "EXTERNAL",
        "TOTAL",
        "ALLOCATED",
        "FREE",
    ];

    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            joined(&self.ranges),
            joined(&self.excludes),
            opt(&self.external_interface),
            self.total.to_string(),
            self.allocated.to_string(),
            self.free.to_string(),
        ]
    }
}

impl Record for Quota {
    const HEADERS: &'static [&'static str] = &["PROJECT", "USED", "LIMIT"];

    fn row(&self) -> Vec<String> {
        let limit = self
            .limit
            .map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
        vec![self.project.clone(), self.used.to_string(), limit]
    }
}

impl Record for User {
    const HEADERS: &'static [&'static str] = &["NAME", "PROJECT", "ROLE", "CREATED"];

    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.project.clone(),
            self.role.as_str().to_owned(),
            self.created_at.clone(),
        ]
    }
}

/// Left-aligned columns separated by two spaces, no trailing blanks.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain([headers[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..headers.len()).map(width).collect();
    let mut out = String::new();
    let headers: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for cells in std::iter::once(&headers).chain(rows) {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The text a JSON value shows in a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Writes to stdout; a closed pipe (`floatip ip list | head`) is not an error.
fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

fn json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    Ok(s)
}

/// A list: one row per record in the chosen style.
pub fn print_list<T: Record>(format: &Format, items: &[T]) -> Result<()> {
    let mut objects: Vec<Value> = items
        .iter()
        .map(serde_json::to_value)
        .collect::<serde_json::Result<_>>()?;
    let mut order: Vec<usize> = (0..items.len()).collect();
    if let Some(key) = &format.sort_column {
        let known = objects.first().is_none_or(|o| o.get(key).is_some());
        if !known {
            fail!(
                Invalid,
                "unknown column {key} (columns: {})",
                keys(&objects[0]).join(", ")
            );
        }
        order.sort_by(|&a, &b| compare(&objects[a][key], &objects[b][key]));
        if format.sort_descending {
            order.reverse();
        }
    }
    if format.usual_table() {
        let rows: Vec<Vec<String>> = order.iter().map(|&i| items[i].row()).collect();
        return emit(&render_table(T::HEADERS, &rows));
    }
    objects = order.into_iter().map(|i| objects[i].take()).collect();
    let columns = match objects.first() {
        Some(first) => chosen(format, first)?,
        None => format.columns.clone(),
    };
    let objects: Vec<Value> = objects.iter().map(|o| select(o, &columns)).collect();
    let rows = |text: fn(&Value) -> String| -> Vec<Vec<String>> {
        objects
            .iter()
            .map(|o| columns.iter().map(|c| text(&o[c])).collect())
            .collect()
    };
    emit(&match format.style {
        Style::Table => {
            let headers: Vec<&str> = columns.iter().map(String::as_str).collect();
            render_table(&headers, &rows(cell))
        }
        Style::Json => json(&objects)?,
        Style::Yaml => formats::yaml(&Value::Array(objects.clone())),
        Style::Value => formats::value_rows(&rows(formats::plain)),
        Style::Csv => formats::csv(&columns, &rows(formats::plain)),
    })
}

/// One record: a FIELD/VALUE table of its JSON keys (in declaration order:
/// serde_json's `preserve_order`), or the record in the chosen style.
pub fn print_one<T: Serialize>(format: &Format, item: &T) -> Result<()> {
    let object = serde_json::to_value(item)?;
    let columns = chosen(format, &object)?;
    let object = select(&object, &columns);
    emit(&match format.style {
        Style::Table => render_table(&["FIELD", "VALUE"], &field_rows(&object)),
        Style::Json => json(&object)?,
        Style::Yaml => formats::yaml(&object),
        // As `openstack ... show -f value`: each value on a line of its own.
        Style::Value => columns
            .iter()
            .map(|c| formats::plain(&object[c]) + "\n")
            .collect(),
        Style::Csv => formats::csv(
            &columns,
            &[columns.iter().map(|c| formats::plain(&object[c])).collect()],
        ),
    })
}

fn field_rows(object: &Value) -> Vec<Vec<String>> {
    match object {
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| vec![k.clone(), cell(v)])
            .collect(),
        other => vec![vec!["value".to_owned(), cell(other)]],
    }
}

fn keys(object: &Value) -> Vec<String> {
    object
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The columns `-c` asks for (each must exist), or every one.
fn chosen(format: &Format, object: &Value) -> Result<Vec<String>> {
    let all = keys(object);
    for c in &format.columns {
        if !all.contains(c) {
            fail!(Invalid, "unknown column {c} (columns: {})", all.join(", "));
        }
    }
    Ok(if format.columns.is_empty() {
        all
    } else {
        format.columns.clone()
    })
}

/// `object` with only `columns`, in their order.
fn select(object: &Value, columns: &[String]) -> Value {
    match object {
        Value::Object(o) => Value::Object(
            columns
                .iter()
                .filter_map(|c| o.get(c).map(|v| (c.clone(), v.clone())))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Sort order of two JSON values: numbers by value, the rest by their text; absent last.
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => std::cmp::Ordering::Equal,
        (Value::Null, _) => std::cmp::Ordering::Greater,
        (_, Value::Null) => std::cmp::Ordering::Less,
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(std::cmp::Ordering::Equal),
        // Addresses sort numerically, not as text.
        (Value::String(x), Value::String(y)) => match (
            x.parse::<std::net::Ipv4Addr>(),
            y.parse::<std::net::Ipv4Addr>(),
        ) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        },
        _ => cell(a).cmp(&cell(b)),
    }
}

/// A table that has no [`Record`] type of its own (status, nat listings): the given rows, or
/// `value` in a machine-readable style.
pub fn print_table<T: Serialize + ?Sized>(
    format: &Format,
    headers: &[&str],
    rows: &[Vec<String>],
    value: &T,
) -> Result<()> {
    let headers_owned: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    emit(&match format.style {
        Style::Table => render_table(headers, rows),
        Style::Json => json(value)?,
        Style::Yaml => formats::yaml(&serde_json::to_value(value)?),
        Style::Value => formats::value_rows(rows),
        Style::Csv => formats::csv(&headers_owned, rows),
    })
}

/// Free text (the summary lines of `status`, confirmations) through the same
/// broken-pipe-safe path as the tables.
pub fn print_text(text: &str) -> Result<()> {
    emit(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::IpStatus;

    #[test]
    fn tables_align_and_keep_columns() {
        let t = render_table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["x".into(), "y".into(), "z".into()],
                vec!["wide cell".into(), "-".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "A          LONG HEADER  C\nx          y            z\nwide cell  -\n"
        );
        assert_eq!(render_table(&["ONLY"], &[]), "ONLY\n");
    }

    #[test]
    fn records_render_absent_values_as_dashes() {
        let f = FloatingIp {
            id: 7,
            floating_ip_address: "203.0.113.1".parse().unwrap(),
            fixed_ip_address: None,
            pool: "public".into(),
            project: None,
            instance: None,
            status: IpStatus::Down,
            description: None,
            tags: Vec::new(),
            created_at: "2024-01-01T00:00:00Z".into(),
        };
        assert_eq!(
            f.row(),
            ["7", "203.0.113.1", "-", "public", "-", "-", "DOWN"]
        );
        let q = Quota {
            project: "demo".into(),
            used: 1,
            limit: None,
        };
        assert_eq!(q.row(), ["demo", "1", "unlimited"]);
        assert_eq!(cell(&serde_json::json!(["a", "b"])), "a,b");
        assert_eq!(cell(&serde_json::json!(3)), "3");
        let rows = field_rows(&serde_json::to_value(&f).unwrap());
        let keys: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(keys[..3], ["id", "floating_ip_address", "fixed_ip_address"]);
    }
}
