//! The Traces panel: an OTLP/HTTP receiver inside the dashboard, a trace list and a waterfall.
//!
//! Services export here when `OTEL_EXPORTER_OTLP_ENDPOINT` is the dashboard's base URL
//! (`mfe up --dashboard` sets it): `POST /v1/traces`, binary protobuf, the path and encoding
//! every OpenTelemetry SDK uses by default. The receiver is the one route outside the access
//! token: exporters cannot be given a per-run secret, and on a loopback-only listener it can
//! only add spans, never read anything (Aspire's dashboard makes the same choice for its
//! unsecured local OTLP endpoint). Bodies are capped at [`MAX_BODY`].
//!
//! Spans are kept in memory, grouped by trace, the newest [`MAX_TRACES`] traces and at most
//! [`MAX_SPANS_PER_TRACE`] spans each; older ones are dropped and counted. One request's trace
//! spans processes: the gateway's proxy span, the service's request span, and — through the
//! event's `traceparent` header — every consumer's span, the gateway's WebSocket delivery
//! included; [`waterfall`] orders them parent before child.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mfe_kit::otlp::{decode_traces, ReceivedSpan};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, Shared};

/// Traces kept; the oldest goes first.
pub const MAX_TRACES: usize = 2_000;
/// Spans kept of one trace; later ones are counted as dropped.
pub const MAX_SPANS_PER_TRACE: usize = 2_000;
/// The largest export body read (the SDK's batches are 512 spans, well under this).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Traces listed at most by `GET /api/traces`.
const LIST_LIMIT: usize = 200;

/// The received traces.
#[derive(Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    traces: HashMap<String, Vec<ReceivedSpan>>,
    /// Trace ids, the one first seen longest ago in front.
    order: VecDeque<String>,
    received: u64,
    dropped: u64,
}

impl Store {
    /// Adds spans; returns how many were kept.
    pub fn add(&self, spans: Vec<ReceivedSpan>) -> usize {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *g;
        let mut kept = 0;
        for span in spans {
            inner.received += 1;
            if !inner.traces.contains_key(&span.trace_id) {
                inner.order.push_back(span.trace_id.clone());
                inner.traces.insert(span.trace_id.clone(), Vec::new());
                while inner.order.len() > MAX_TRACES {
                    if let Some(old) = inner.order.pop_front() {
                        inner.dropped += inner.traces.remove(&old).map_or(0, |s| s.len() as u64);
                    }
                }
            }
            let trace = inner.traces.get_mut(&span.trace_id).expect("inserted above");
            if trace.len() < MAX_SPANS_PER_TRACE {
                trace.push(span);
                kept += 1;
            } else {
                inner.dropped += 1;
            }
        }
        kept
    }

    /// The newest traces first, optionally only those with a span of `service` or a span whose
    /// name, attribute value or trace id contains `text`.
    pub fn list(&self, service: Option<&str>, text: Option<&str>, limit: usize) -> Value {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let text = text.map(str::to_lowercase);
        let mut rows = Vec::new();
        for id in g.order.iter().rev() {
            let Some(spans) = g.traces.get(id) else { continue };
            if spans.is_empty() {
                continue;
            }
            if service.is_some_and(|s| !spans.iter().any(|x| x.service == s)) {
                continue;
            }
            if let Some(t) = &text {
                let hit = id.contains(t.as_str())
                    || spans.iter().any(|x| {
                        x.name.to_lowercase().contains(t.as_str())
                            || x.attributes.iter().any(|(_, v)| v.to_lowercase().contains(t.as_str()))
                    });
                if !hit {
                    continue;
                }
            }
            rows.push(summary(id, spans));
            if rows.len() >= limit {
                break;
            }
        }
        json!({"traces": rows, "stored": g.order.len(), "received": g.received, "dropped": g.dropped,
            "maxTraces": MAX_TRACES})
    }

    /// One trace as a waterfall, `None` when it is not (or no longer) stored.
    pub fn trace(&self, id: &str) -> Option<Value> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let spans = g.traces.get(&id.to_ascii_lowercase())?;
        Some(waterfall(id, spans))
    }
}

/// The trace's root (its earliest span without a received parent), services, size and extent.
fn summary(id: &str, spans: &[ReceivedSpan]) -> Value {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let root = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty() || !ids.contains(s.parent_span_id.as_str()))
        .min_by_key(|s| s.start_unix_nano)
        .or_else(|| spans.first());
    let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(start);
    let mut services: Vec<&str> = Vec::new();
    for s in spans {
        if !services.contains(&s.service.as_str()) {
            services.push(&s.service);
        }
    }
    json!({
        "traceId": id,
        "root": root.map(|r| format!("{}: {}", r.service, label(r))),
        "services": services,
        "spans": spans.len(),
        "errors": spans.iter().filter(|s| s.error.is_some()).count(),
        "startUnixNano": start,
        "durationMs": ms(end.saturating_sub(start)),
    })
}

/// The span's name with what our spans record about their work: `request POST /api/payments`
/// (the method and route or path of a request or proxy span), `consume payment.created`.
fn label(s: &ReceivedSpan) -> String {
    let attr = |k: &str| s.attributes.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    match (attr("method"), attr("route").or(attr("path")), attr("event_type")) {
        (Some(m), Some(r), _) => format!("{} {m} {r}", s.name),
        (_, _, Some(t)) => format!("{} {t}", s.name),
        _ => s.name.clone(),
    }
}

fn ms(nanos: u64) -> f64 {
    (nanos as f64 / 1e4).round() / 100.0
}

/// Every span of a trace in tree order (each parent before its children, siblings by start),
/// with its depth and its offset from the trace's start. A span whose parent was not received
/// (another process still exporting, or a caller outside the stack) is a root, marked so.
pub fn waterfall(id: &str, spans: &[ReceivedSpan]) -> Value {
    let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(start);
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        if s.parent_span_id.is_empty() || !ids.contains(s.parent_span_id.as_str()) || s.parent_span_id == s.span_id {
            roots.push(i);
        } else {
            children.entry(s.parent_span_id.as_str()).or_default().push(i);
        }
    }
    let by_start = |v: &mut Vec<usize>| v.sort_by_key(|&i| (spans[i].start_unix_nano, spans[i].span_id.clone()));
    by_start(&mut roots);
    for v in children.values_mut() {
        by_start(v);
    }
    let mut rows = Vec::with_capacity(spans.len());
    let mut seen = HashSet::new();
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if !seen.insert(i) {
            continue; // a cycle of ids: each span once
        }
        let s = &spans[i];
        let orphan = !s.parent_span_id.is_empty() && !ids.contains(s.parent_span_id.as_str());
        rows.push(json!({
            "spanId": s.span_id, "parentSpanId": s.parent_span_id, "service": s.service, "name": label(s),
            "kind": s.kind, "depth": depth, "offsetMs": ms(s.start_unix_nano.saturating_sub(start)),
            "durationMs": ms(s.duration_nanos()), "error": s.error, "parentMissing": orphan,
            "attributes": s.attributes.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        }));
        if let Some(kids) = children.get(s.span_id.as_str()) {
            stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
        }
    }
    json!({"traceId": id, "durationMs": ms(end.saturating_sub(start)), "spans": rows})
}

/// `POST /v1/traces`: an OTLP/HTTP protobuf export. Answers the (empty) protobuf
/// `ExportTraceServiceResponse`; 415 for OTLP/JSON or a compressed body, 400 for a body that
/// does not decode, each with a line saying what to change.
pub async fn receive(State(st): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.contains("json") {
        let msg = "this receiver reads OTLP/HTTP protobuf only: set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf";
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, msg).into_response();
    }
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).filter(|e| *e != "identity")
    {
        let msg = format!(
            "content-encoding {enc} is not read here: export uncompressed (OTEL_EXPORTER_OTLP_COMPRESSION=none)"
        );
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, msg).into_response();
    }
    match decode_traces(&body) {
        Ok(spans) => {
            st.traces.add(spans);
            ([(header::CONTENT_TYPE, "application/x-protobuf")], Vec::<u8>::new()).into_response()
        }
        Err(e) => {
            (StatusCode::BAD_REQUEST, format!("not an OTLP ExportTraceServiceRequest (protobuf): {e}")).into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub service: Option<String>,
    /// Text a span name, an attribute value or the trace id contains (e.g. a payment id).
    pub q: Option<String>,
    pub limit: Option<usize>,
}

/// `GET /api/traces?service=payments&q=<text>`: the newest traces first.
pub async fn list(State(st): State<Shared>, Query(q): Query<ListQuery>) -> Json<Value> {
    let service = q.service.as_deref().filter(|s| !s.is_empty());
    let text = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    Json(st.traces.list(service, text, q.limit.unwrap_or(LIST_LIMIT).min(LIST_LIMIT)))
}

/// `GET /api/traces/{trace_id}`: one trace's waterfall.
pub async fn get(State(st): State<Shared>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    st.traces.trace(&id).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("trace {id} is not here: not received yet (spans are exported in batches every few seconds) or older than the last {MAX_TRACES} traces"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: &str, id: &str, parent: &str, service: &str, start: u64, end: u64) -> ReceivedSpan {
        ReceivedSpan {
            service: service.into(),
            name: format!("{service} {id}"),
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            kind: "internal",
            start_unix_nano: start,
            end_unix_nano: end,
            error: None,
            attributes: vec![("payment.id".into(), format!("pay-{id}"))],
        }
    }

    #[test]
    fn a_label_names_the_route_or_the_event() {
        let mut s = span("t", "a", "", "payments", 0, 1);
        s.name = "request".into();
        s.attributes = vec![("method".into(), "POST".into()), ("route".into(), "/api/payments".into())];
        assert_eq!(label(&s), "request POST /api/payments");
        s.name = "consume".into();
        s.attributes = vec![("event_type".into(), "payment.created".into())];
        assert_eq!(label(&s), "consume payment.created");
        s.attributes.clear();
        assert_eq!(label(&s), "consume");
    }

    fn names(v: &Value) -> Vec<(String, u64)> {
        v["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["spanId"].as_str().unwrap().to_string(), s["depth"].as_u64().unwrap()))
            .collect()
    }

    #[test]
    fn a_waterfall_puts_each_parent_before_its_children_and_siblings_by_start() {
        // Arrival order is export order (consumers flush before the gateway), not tree order.
        let spans = vec![
            span("t", "c2", "b", "admin", 5_000_000, 6_000_000),
            span("t", "c1", "b", "gateway", 4_000_000, 7_000_000),
            span("t", "b", "a", "payments", 1_000_000, 3_000_000),
            span("t", "a", "", "gateway", 0, 3_500_000),
        ];
        let w = waterfall("t", &spans);
        assert_eq!(names(&w), vec![("a".into(), 0), ("b".into(), 1), ("c1".into(), 2), ("c2".into(), 2)], "{w:#}");
        assert_eq!(w["durationMs"], 7.0);
        assert_eq!(w["spans"][3]["offsetMs"], 5.0);
    }

    #[test]
    fn a_span_whose_parent_was_not_received_is_a_root_marked_so() {
        let spans = vec![span("t", "b", "zz", "payments", 10, 20), span("t", "c", "b", "admin", 12, 15)];
        let w = waterfall("t", &spans);
        assert_eq!(names(&w), vec![("b".into(), 0), ("c".into(), 1)]);
        assert_eq!(w["spans"][0]["parentMissing"], true);
        assert_eq!(w["spans"][1]["parentMissing"], false);
    }

    #[test]
    fn a_cycle_of_ids_shows_each_span_once() {
        let spans = vec![span("t", "a", "b", "x", 0, 1), span("t", "b", "a", "x", 0, 1), span("t", "r", "", "x", 0, 1)];
        assert_eq!(names(&waterfall("t", &spans)).len(), 1, "only the root is reachable; the cycle is not looped");
    }

    #[test]
    fn the_list_is_newest_first_filtered_and_summarised() {
        let store = Store::default();
        store.add(vec![span("t1", "a", "", "gateway", 0, 2_000_000), span("t1", "b", "a", "payments", 1, 5)]);
        store.add(vec![span("t2", "x", "", "auth", 0, 1)]);
        let all = store.list(None, None, 10);
        let ids: Vec<&str> = all["traces"].as_array().unwrap().iter().map(|t| t["traceId"].as_str().unwrap()).collect();
        assert_eq!(ids, ["t2", "t1"]);
        let t1 = &all["traces"][1];
        assert_eq!(t1["root"], "gateway: gateway a");
        assert_eq!(t1["services"], json!(["gateway", "payments"]));
        assert_eq!((t1["spans"].as_u64(), t1["durationMs"].as_f64()), (Some(2), Some(2.0)));
        let payments = store.list(Some("payments"), None, 10);
        assert_eq!(payments["traces"].as_array().unwrap().len(), 1);
        let by_attr = store.list(None, Some("PAY-X"), 10);
        assert_eq!(by_attr["traces"][0]["traceId"], "t2", "attribute values match, case-insensitively");
        assert!(store.trace("T1").is_some(), "trace ids are hex: any case finds them");
        assert!(store.trace("t9").is_none());
    }

    #[test]
    fn old_traces_and_overlong_ones_are_dropped_and_counted() {
        let store = Store::default();
        for i in 0..MAX_TRACES + 5 {
            store.add(vec![span(&format!("t{i}"), "a", "", "x", 0, 1)]);
        }
        let l = store.list(None, None, 1);
        assert_eq!(l["stored"], MAX_TRACES);
        assert_eq!(l["dropped"], 5);
        assert!(store.trace("t0").is_none() && store.trace(&format!("t{}", MAX_TRACES + 4)).is_some());
        let big: Vec<_> = (0..MAX_SPANS_PER_TRACE + 3).map(|i| span("big", &format!("s{i}"), "", "x", 0, 1)).collect();
        assert_eq!(store.add(big), MAX_SPANS_PER_TRACE);
    }
}
