//! Printing shared by all commands: aligned tables for people (the default), JSON for
//! programs (`-f json`: an array for lists, an object for a single record).

use std::{fmt, io::Write};

use anyhow::{Context, Result};
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{MapAccess, Visitor},
};
use serde_json::Value;

use crate::{
    cli::Format,
    control::{FloatingIp, Pool, Quota, users::User},
};

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

/// The fields of a JSON object in their serialization order.
struct Fields(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Fields;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(Visit)
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

/// A list: one row per record, or a JSON array.
pub fn print_list<T: Record>(format: Format, items: &[T]) -> Result<()> {
    emit(&match format {
        Format::Table => render_table(
            T::HEADERS,
            &items.iter().map(Record::row).collect::<Vec<_>>(),
        ),
        Format::Json => json(items)?,
    })
}

/// One record: a FIELD/VALUE table of its JSON keys, or a JSON object.
pub fn print_one<T: Serialize>(format: Format, item: &T) -> Result<()> {
    emit(&match format {
        Format::Table => {
            // Through the JSON text rather than `Value`, whose map would sort the keys.
            let Fields(fields) = serde_json::from_str(&serde_json::to_string(item)?)?;
            let rows: Vec<Vec<String>> = fields
                .iter()
                .map(|(k, v)| vec![k.clone(), cell(v)])
                .collect();
            render_table(&["FIELD", "VALUE"], &rows)
        }
        Format::Json => json(item)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Status;

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
            status: Status::Down,
            description: None,
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
        let Fields(fields) = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys[..3], ["id", "floating_ip_address", "fixed_ip_address"]);
    }
}
