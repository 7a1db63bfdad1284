//! `/metrics` in the OpenMetrics text format (prometheus-client): API requests and latency
//! by route, method and status; time spent in the control layer (which includes the map
//! writes of an association); time from a request's arrival to its change being in the maps;
//! repairs and drift (maps against database); the data plane's per-outcome counters,
//! associations and capacity; per-floating-IP packets and bytes; agent up and build info.
//!
//! Cardinality: per-floating-IP series are exported for at most [`PER_IP_SERIES`]
//! associations, the busiest by bytes, so that a gateway with a million associations still
//! scrapes in bounded size; the totals over all associations are always exported, and
//! `floatip_association_series_dropped` says how many were left out. `floatip nat stats` has
//! them all.

use std::sync::Mutex;

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::Shared;
use crate::control::{self, Gateway, SyncState};

/// Most associations with their own series.
pub const PER_IP_SERIES: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    floating_ip: String,
    direction: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.1 ms to ~1.6 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<RequestLabels>,
    pub control_seconds: Histogram,
    pub write_to_maps_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("floatip");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = HistogramFamily::<RequestLabels>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let control_seconds = latency_histogram();
        let write_to_maps_seconds = latency_histogram();
        registry.register(
            "api_requests",
            "API requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "API request latency",
            latency.clone(),
        );
        registry.register(
            "control_operation_duration_seconds",
            "Time in the control layer per API operation, map writes of associations included",
            control_seconds.clone(),
        );
        registry.register(
            "api_write_to_maps_duration_seconds",
            "From an API request's arrival to its association change being in the maps (traffic \
             follows from then on): queueing, validation and the map writes",
            write_to_maps_seconds.clone(),
        );
        // The `_info` gauge convention rather than OpenMetrics' info type, which the Prometheus
        // text parsers (promtool) do not know.
        let build = Family::<Vec<(String, String)>, Gauge<i64>>::default();
        build
            .get_or_create(&vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )])
            .set(1);
        registry.register("build_info", "Agent build", build);
        let up = Gauge::<i64>::default();
        up.set(1);
        registry.register("agent_up", "The agent is serving", up);
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            control_seconds,
            write_to_maps_seconds,
        }
    }

    pub fn record_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = RequestLabels {
            route: route.to_owned(),
            method: method.to_owned(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }
}

/// Registers a gauge with value `v` (the data-plane readings are taken fresh at each scrape).
fn gauge(r: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    r.register(name, help, g);
}

/// Registers a counter with value `v` (kept elsewhere, read at each scrape).
fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    r.register(name, help, c);
}

pub async fn scrape(State(api): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    // The pairs' counters are read beside the control thread, not on it (see
    // `control::stats`): a scrape then delays no write.
    let bpffs = api.bpffs.clone();
    let (stats, pairs) = tokio::join!(
        api.worker.run(|c| c.dataplane_stats()),
        tokio::task::spawn_blocking(move || Gateway::new(&bpffs).nat_stats(None))
    );
    // Detached between the two readings: the maps are gone, so is the attachment.
    let stats = match (stats, pairs) {
        (Ok(Some(s)), Ok(Ok(pairs))) => Ok(Some((s, pairs))),
        (Ok(Some(_)), Ok(Err(e))) => Err(e),
        (Ok(Some(_)), Err(e)) => Err(anyhow::anyhow!("the counter reader failed: {e}")),
        (Ok(None), _) => Ok(None),
        (Err(e), _) => Err(e),
    };
    let mut live = Registry::with_prefix("floatip");
    let busy = Counter::<f64, std::sync::atomic::AtomicU64>::default();
    busy.inc_by(api.worker.busy().as_secs_f64());
    live.register(
        "control_thread_busy_seconds",
        "Time the agent's one control thread (the one database writer) spent on requests: \
         its rate near 1 means requests queue for it",
        busy,
    );
    let (batches, batched) = api.worker.batches();
    counter(
        &mut live,
        "control_batches",
        "Batches of requests the control thread committed as one transaction (group commit)",
        batches,
    );
    counter(
        &mut live,
        "control_batched_requests",
        "Control operations those batches held (divided by the batches: the mean batch size)",
        batched,
    );
    // Counted by the control layer of this process, wherever the comparison ran.
    let repairs = control::repair_counts();
    counter(
        &mut live,
        "repairs",
        "Times the maps were found to differ from the database and repaired",
        repairs.repairs,
    );
    counter(
        &mut live,
        "repaired_floating_ips",
        "Floating IPs whose map entries those repairs fixed",
        repairs.pairs,
    );
    match stats {
        Ok(Some((s, mut pairs))) => {
            gauge(
                &mut live,
                "dataplane_attached",
                "The data plane is attached",
                1,
            );
            let outcomes = Family::<OutcomeLabels, Gauge<i64>>::default();
            for (name, v) in &s.outcomes {
                outcomes
                    .get_or_create(&OutcomeLabels {
                        outcome: (*name).to_owned(),
                    })
                    .set(*v as i64);
            }
            live.register(
                "packets_by_outcome",
                "Packets seen by the programs, by outcome (monotonic)",
                outcomes,
            );
            gauge(
                &mut live,
                "maps_in_step",
                "1 when the maps hold exactly the database's associations",
                i64::from(s.sync == SyncState::Clean),
            );
            gauge(
                &mut live,
                "maps_differing_floating_ips",
                "Floating IPs on which maps and database differ (compared in full when their \
                 generations differ)",
                s.differing as i64,
            );
            gauge(
                &mut live,
                "associations",
                "Associations in the maps",
                pairs.len() as i64,
            );
            gauge(
                &mut live,
                "associations_capacity",
                "Size of the association maps",
                i64::from(s.max_associations),
            );
            pairs.sort_by_key(|p| std::cmp::Reverse(p.in_bytes + p.out_bytes));
            let dropped = pairs.len().saturating_sub(PER_IP_SERIES);
            let (mut tp, mut tb) = ([0u64; 2], [0u64; 2]);
            let packets = Family::<PairLabels, Gauge<i64>>::default();
            let bytes = Family::<PairLabels, Gauge<i64>>::default();
            for (i, p) in pairs.iter().enumerate() {
                tp[0] += p.in_packets;
                tp[1] += p.out_packets;
                tb[0] += p.in_bytes;
                tb[1] += p.out_bytes;
                if i >= PER_IP_SERIES {
                    continue;
                }
                for (dir, pk, by) in [
                    ("in", p.in_packets, p.in_bytes),
                    ("out", p.out_packets, p.out_bytes),
                ] {
                    let l = PairLabels {
                        floating_ip: p.floating.to_string(),
                        direction: dir.to_owned(),
                    };
                    packets.get_or_create(&l).set(pk as i64);
                    bytes.get_or_create(&l).set(by as i64);
                }
            }
            live.register(
                "floating_ip_packets",
                "Packets translated per floating IP and direction (in: to the instance)",
                packets,
            );
            live.register(
                "floating_ip_bytes",
                "Bytes translated per floating IP and direction",
                bytes,
            );
            let totals_p = Family::<OutcomeLabels, Gauge<i64>>::default();
            let totals_b = Family::<OutcomeLabels, Gauge<i64>>::default();
            for (i, dir) in ["in", "out"].iter().enumerate() {
                totals_p
                    .get_or_create(&OutcomeLabels {
                        outcome: (*dir).to_owned(),
                    })
                    .set(tp[i] as i64);
                totals_b
                    .get_or_create(&OutcomeLabels {
                        outcome: (*dir).to_owned(),
                    })
                    .set(tb[i] as i64);
            }
            live.register(
                "translated_packets",
                "Packets translated over all associations, by direction",
                totals_p,
            );
            live.register(
                "translated_bytes",
                "Bytes translated over all associations, by direction",
                totals_b,
            );
            gauge(
                &mut live,
                "association_series_dropped",
                "Associations without their own series (beyond the per-IP limit)",
                dropped as i64,
            );
        }
        Ok(None) => gauge(
            &mut live,
            "dataplane_attached",
            "The data plane is attached",
            0,
        ),
        Err(e) => {
            eprintln!("floatip agent: cannot read the data plane counters: {e:#}");
            gauge(
                &mut live,
                "dataplane_attached",
                "The data plane is attached",
                0,
            );
        }
    }
    let mut text = String::new();
    {
        let registry = api
            .metrics
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if encode(&mut text, &registry).is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    // Two registries, one exposition: only the last may end with the EOF marker.
    if let Some(stripped) = text.strip_suffix("# EOF\n") {
        text.truncate(stripped.len());
    }
    if encode(&mut text, &live).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            to_text_format(&text),
        )
            .into_response()
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4, for clients that did not ask for
/// OpenMetrics (promtool, curl): a counter's HELP and TYPE name its `_total` samples, and
/// the EOF marker goes.
fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_counters_by_their_samples() {
        let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{a=\"b\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{a=\"b\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
