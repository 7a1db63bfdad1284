//! The machine-readable renderings besides JSON: `value` (space-separated, no header, as the
//! `openstack` CLI prints it), `csv` (RFC 4180, header first) and `yaml` (block style; strings
//! double-quoted, which every YAML parser reads as they are).

use serde_json::Value;

use super::cell;

/// `value`: one line per row, cells separated by a space.
pub fn value_rows(rows: &[Vec<String>]) -> String {
    rows.iter().map(|r| r.join(" ") + "\n").collect()
}

/// `csv`: the header row, then the rows; every cell quoted.
pub fn csv(headers: &[String], rows: &[Vec<String>]) -> String {
    let quote = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    std::iter::once(headers)
        .chain(rows.iter().map(Vec::as_slice))
        .map(|r| r.iter().map(|c| quote(c)).collect::<Vec<_>>().join(",") + "\n")
        .collect()
}

/// `yaml`: `value` as a block-style document.
pub fn yaml(value: &Value) -> String {
    let mut out = String::new();
    write_yaml(value, 0, &mut out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Array(a) if a.is_empty() => "[]".to_owned(),
        Value::Object(o) if o.is_empty() => "{}".to_owned(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Array(a) if !a.is_empty()) || matches!(v, Value::Object(o) if !o.is_empty())
}

fn write_yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, v) in o {
                if is_block(v) {
                    out.push_str(&format!("{pad}{k}:\n"));
                    write_yaml(v, indent + 2, out);
                } else {
                    out.push_str(&format!("{pad}{k}: {}\n", scalar(v)));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                if is_block(item) {
                    // The first line of the item's block goes after the dash.
                    let mut inner = String::new();
                    write_yaml(item, indent + 2, &mut inner);
                    out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

/// The text of `v` in a `value` or `csv` cell: like a table cell, but an absent value (or an
/// empty list) is empty.
pub fn plain(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Array(a) if a.is_empty() => String::new(),
        other => cell(other),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renderings() {
        assert_eq!(value_rows(&[vec!["a".into(), "b".into()]]), "a b\n");
        assert_eq!(
            csv(&["K".into(), "V".into()], &[vec!["x\"y".into(), "".into()]]),
            "\"K\",\"V\"\n\"x\"\"y\",\"\"\n"
        );
        assert_eq!(
            yaml(&json!([{"a": 1, "b": "x: y", "c": null, "d": ["p", "q"]}, {"a": 2}])),
            "- a: 1\n  b: \"x: y\"\n  c: null\n  d:\n    - \"p\"\n    - \"q\"\n- a: 2\n"
        );
        assert_eq!(yaml(&json!([])), "[]\n");
        assert_eq!(plain(&Value::Null), "");
    }
}
