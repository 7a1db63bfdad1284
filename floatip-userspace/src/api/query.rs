//! Neutron's list parameters over presented resources: filters (`field=value`, repeated for
//! any of several values), `fields`, `sort_key`/`sort_dir` and `limit`/`marker` pagination with
//! a `next` link. Resources arrive as JSON objects, so one implementation serves every
//! collection; the allowed filter keys are per collection and anything else is a 400.

use std::{cmp::Ordering, net::Ipv4Addr};

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};

/// Parsed list parameters.
#[derive(Debug, Default)]
pub struct ListQuery {
    filters: Vec<(String, Vec<String>)>,
    fields: Vec<String>,
    sort: Vec<(String, bool)>,
    limit: Option<usize>,
    marker: Option<String>,
    /// Values of the collection's own parameters (see [`Self::parse_with`]), in order.
    params: Vec<(String, String)>,
    /// Everything but `marker`, to build the next link.
    carried: Vec<(String, String)>,
}

/// The parameters of the request, in order, decoded.
pub fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl ListQuery {
    /// Parses the query string; `filters` are the keys that may filter, sort and be chosen
    /// with `fields`.
    pub fn parse(raw: Option<&str>, filters: &[&str]) -> ApiResult<Self> {
        Self::parse_with(raw, filters, &[])
    }

    /// [`Self::parse`] that also takes `params`, keys with a meaning of the collection's
    /// own (Neutron's tag filters): their values are for [`Self::list_param`], and are
    /// carried into the next link like filters.
    pub fn parse_with(raw: Option<&str>, filters: &[&str], params: &[&str]) -> ApiResult<Self> {
        let mut q = Self::default();
        let mut sort_keys = Vec::new();
        let mut sort_dirs = Vec::new();
        for (k, v) in pairs(raw) {
            if k != "marker" {
                q.carried.push((k.clone(), v.clone()));
            }
            match k.as_str() {
                "fields" => {
                    if !filters.contains(&v.as_str()) {
                        return Err(ApiError::bad_request(format!(
                            "unknown field '{v}' in fields"
                        )));
                    }
                    q.fields.push(v);
                }
                "sort_key" => {
                    if !filters.contains(&v.as_str()) {
                        return Err(ApiError::bad_request(format!("cannot sort by '{v}'")));
                    }
                    sort_keys.push(v);
                }
                "sort_dir" => match v.as_str() {
                    "asc" => sort_dirs.push(true),
                    "desc" => sort_dirs.push(false),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "sort_dir must be asc or desc, not '{v}'"
                        )));
                    }
                },
                "limit" => {
                    let n: usize = v.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "limit must be a non-negative integer, not '{v}'"
                        ))
                    })?;
                    // Neutron: 0 means no limit.
                    q.limit = (n > 0).then_some(n);
                }
                "marker" => q.marker = Some(v),
                "page_reverse" => {
                    if !v.eq_ignore_ascii_case("false") {
                        return Err(ApiError::bad_request("page_reverse is not supported"));
                    }
                }
                key if params.contains(&key) => q.params.push((k, v)),
                key if filters.contains(&key) => match q.filters.iter_mut().find(|(f, _)| f == key)
                {
                    Some((_, values)) => values.push(v),
                    None => q.filters.push((k, vec![v])),
                },
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "'{k}' is not a filter of this collection"
                    )));
                }
            }
        }
        if sort_dirs.len() > sort_keys.len() {
            return Err(ApiError::bad_request(
                "more sort_dir than sort_key parameters",
            ));
        }
        q.sort = sort_keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, sort_dirs.get(i).copied().unwrap_or(true)))
            .collect();
        Ok(q)
    }

    /// The value the filter on `key` wants, if it is the only one (for pre-filtering in the
    /// control layer).
    pub fn single(&self, key: &str) -> Option<&str> {
        self.filters
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| (v.len() == 1).then(|| v[0].as_str()))
    }

    /// The values of parameter `key` as a list: comma-separated, and repeatable (`a,b` and
    /// `key=a&key=b` are the same); empty items are dropped.
    pub fn list_param(&self, key: &str) -> Vec<String> {
        self.params
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Filters, sorts, pages and trims `items`, and wraps them as `{collection: [...]}` (plus
    /// `{collection}_links` when a page is cut short). `path` is the collection's URL path.
    pub fn apply(&self, collection: &str, path: &str, mut items: Vec<Value>) -> ApiResult<Value> {
        items.retain(|item| {
            self.filters
                .iter()
                .all(|(k, wanted)| wanted.iter().any(|w| matches(item.get(k), w)))
        });
        // Always ending with the id makes the order total, so markers are stable.
        let mut keys: Vec<(&str, bool)> = self.sort.iter().map(|(k, d)| (k.as_str(), *d)).collect();
        keys.push(("id", keys.last().is_none_or(|k| k.1)));
        items.sort_by(|a, b| {
            keys.iter()
                .map(|(k, asc)| {
                    let o = compare(a.get(*k), b.get(*k));
                    if *asc { o } else { o.reverse() }
                })
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        });
        if let Some(marker) = &self.marker {
            let Some(pos) = items
                .iter()
                .position(|i| i.get("id").and_then(Value::as_str) == Some(marker))
            else {
                return Err(ApiError::not_found(
                    "HTTPNotFound",
                    format!("marker {marker} not found"),
                ));
            };
            items.drain(..=pos);
        }
        let mut links = Vec::new();
        if let Some(limit) = self.limit
            && items.len() > limit
        {
            items.truncate(limit);
            let last = items
                .last()
                .and_then(|i| i.get("id"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &self.carried {
                query.append_pair(k, v);
            }
            query.append_pair("marker", last);
            links.push(json!({"rel": "next", "href": format!("{path}?{}", query.finish())}));
        }
        if !self.fields.is_empty() {
            for item in &mut items {
                if let Value::Object(map) = item {
                    map.retain(|k, _| self.fields.iter().any(|f| f == k));
                }
            }
        }
        let mut out = Map::new();
        out.insert(collection.to_owned(), Value::Array(items));
        if !links.is_empty() {
            out.insert(format!("{collection}_links"), Value::Array(links));
        }
        Ok(Value::Object(out))
    }
}

/// Trims a single resource to `fields=` of a show request.
pub fn select_fields(raw: Option<&str>, allowed: &[&str], mut item: Value) -> ApiResult<Value> {
    let mut fields = Vec::new();
    for (k, v) in pairs(raw) {
        if k != "fields" {
            return Err(ApiError::bad_request(format!(
                "'{k}' is not a parameter of a show request"
            )));
        }
        if !allowed.contains(&v.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown field '{v}' in fields"
            )));
        }
        fields.push(v);
    }
    if !fields.is_empty()
        && let Value::Object(map) = &mut item
    {
        map.retain(|k, _| fields.iter().any(|f| f == k));
    }
    Ok(item)
}

/// Whether a resource's field equals a filter value (text as given; booleans in any case).
fn matches(field: Option<&Value>, wanted: &str) -> bool {
    match field {
        Some(Value::String(s)) => s == wanted,
        Some(Value::Bool(b)) => wanted.eq_ignore_ascii_case(if *b { "true" } else { "false" }),
        Some(Value::Number(n)) => n.to_string() == wanted,
        // Filtering for an empty value finds the unset ones (`port_id=`).
        Some(Value::Null) => wanted.is_empty(),
        _ => false,
    }
}

/// Order of two field values: addresses numerically, text, numbers and booleans as such,
/// null first.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::String(x)), Some(Value::String(y))) => {
            match (x.parse::<Ipv4Addr>(), y.parse::<Ipv4Addr>()) {
                (Ok(p), Ok(q)) => p.cmp(&q),
                _ => x.cmp(y),
            }
        }
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None | Some(Value::Null), None | Some(Value::Null)) => Ordering::Equal,
        (None | Some(Value::Null), _) => Ordering::Less,
        (_, None | Some(Value::Null)) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items() -> Vec<Value> {
        vec![
            json!({"id": "b", "addr": "10.0.0.10", "status": "DOWN", "ext": true}),
            json!({"id": "a", "addr": "10.0.0.9", "status": "ACTIVE", "ext": false}),
            json!({"id": "c", "addr": "10.0.0.100", "status": "ACTIVE", "ext": true}),
        ]
    }

    fn ids(v: &Value) -> Vec<&str> {
        v["things"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect()
    }

    const KEYS: &[&str] = &["id", "addr", "status", "ext"];

    #[test]
    fn filters_sort_and_pages() {
        let q = |s: &str| {
            ListQuery::parse(Some(s), KEYS)
                .unwrap()
                .apply("things", "/things", items())
                .unwrap()
        };
        assert_eq!(ids(&q("")), ["a", "b", "c"]);
        assert_eq!(ids(&q("status=ACTIVE")), ["a", "c"]);
        assert_eq!(ids(&q("status=ACTIVE&status=DOWN&ext=True")), ["b", "c"]);
        assert_eq!(ids(&q("sort_key=addr&sort_dir=desc")), ["c", "b", "a"]);
        assert_eq!(
            ids(&q("sort_key=addr")),
            ["a", "b", "c"],
            "addresses sort numerically"
        );
        let page = q("sort_key=addr&limit=2");
        assert_eq!(ids(&page), ["a", "b"]);
        assert_eq!(
            page["things_links"][0]["href"],
            "/things?sort_key=addr&limit=2&marker=b"
        );
        let rest = q("sort_key=addr&limit=2&marker=b");
        assert_eq!(ids(&rest), ["c"]);
        assert!(rest.get("things_links").is_none());
        let trimmed = q("fields=id&status=DOWN");
        assert_eq!(trimmed["things"], json!([{"id": "b"}]));
    }

    #[test]
    fn list_params_split_repeat_and_carry() {
        let q = ListQuery::parse_with(
            Some("tags=a,b&limit=1&tags=c,&x-y=d"),
            KEYS,
            &["tags", "x-y"],
        )
        .unwrap();
        assert_eq!(q.list_param("tags"), ["a", "b", "c"]);
        assert_eq!(q.list_param("x-y"), ["d"]);
        assert!(q.list_param("other").is_empty());
        let page = q.apply("things", "/t", items()).unwrap();
        assert_eq!(
            page["things_links"][0]["href"],
            "/t?tags=a%2Cb&limit=1&tags=c%2C&x-y=d&marker=a"
        );
        assert_eq!(
            ListQuery::parse(Some("tags=a"), KEYS).unwrap_err().status,
            400,
            "only where the collection takes it"
        );
    }

    #[test]
    fn bad_parameters_are_400() {
        for bad in [
            "nope=1",
            "fields=secret",
            "sort_key=nope",
            "sort_dir=up",
            "limit=-1",
            "page_reverse=true",
            "sort_dir=asc",
        ] {
            let e = ListQuery::parse(Some(bad), KEYS).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
        }
        let e = ListQuery::parse(Some("marker=zz"), KEYS)
            .unwrap()
            .apply("things", "/t", items())
            .unwrap_err();
        assert_eq!(e.status, 404);
    }
}
