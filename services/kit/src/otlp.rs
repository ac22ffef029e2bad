//! The receiving end of OTLP/HTTP: what an exporter (ours, [`crate::otel`], or any other) sends
//! to `POST /v1/traces`, decoded into plain spans. `mfe dashboard`'s trace view and the tests'
//! collector (`mfe-testkit`) both read bodies through [`decode_traces`].
//!
//! Only the binary protobuf encoding (`application/x-protobuf`, what [`crate::otel`] and the
//! OpenTelemetry SDKs send by default) is read; OTLP/JSON is refused by the callers with 415.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value, AnyValue, KeyValue},
    trace::v1::{span::SpanKind, status::StatusCode},
};
use prost::Message;

/// One received span; ids in lowercase hex (an empty `parent_span_id`: a root span).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReceivedSpan {
    /// The `service.name` of the span's resource (empty when the exporter sent none).
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: &'static str,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// The status message when the span's status is an error (`""` when it gave none).
    pub error: Option<String>,
    /// The span's attributes, values as text, in the order sent.
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The span's length in nanoseconds (0 for a span that ended before it started).
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }
}

/// Decodes one `ExportTraceServiceRequest` body (binary protobuf).
///
/// # Errors
/// When the body is not a protobuf export request.
pub fn decode_traces(body: &[u8]) -> Result<Vec<ReceivedSpan>, prost::DecodeError> {
    let req = ExportTraceServiceRequest::decode(body)?;
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
            let error = s.status.as_ref().filter(|st| st.code == StatusCode::Error as i32).map(|st| st.message.clone());
            out.push(ReceivedSpan {
                service: service.clone(),
                kind: kind_name(s.kind),
                trace_id: hex::encode(&s.trace_id),
                span_id: hex::encode(&s.span_id),
                parent_span_id: hex::encode(&s.parent_span_id),
                start_unix_nano: s.start_time_unix_nano,
                end_unix_nano: s.end_time_unix_nano,
                error,
                attributes: s
                    .attributes
                    .iter()
                    .map(|KeyValue { key, value }| (key.clone(), text(value.as_ref())))
                    .collect(),
                name: s.name,
            });
        }
    }
    Ok(out)
}

fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        _ => "internal",
    }
}

/// An attribute value as text: strings as they are, the rest in their usual notation.
fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex::encode(b),
        Some(any_value::Value::ArrayValue(a)) => {
            format!("[{}]", a.values.iter().map(|v| text(Some(v))).collect::<Vec<_>>().join(", "))
        }
        Some(any_value::Value::KvlistValue(kv)) => format!(
            "{{{}}}",
            kv.values.iter().map(|k| format!("{}: {}", k.key, text(k.value.as_ref()))).collect::<Vec<_>>().join(", ")
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span, Status},
    };

    fn string(key: &str, v: &str) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }) }
    }

    fn request(spans: Vec<Span>) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![string("service.name", "payments")], ..Default::default() }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn a_span_keeps_its_service_ids_times_kind_status_and_attributes() {
        let body = request(vec![Span {
            name: "POST /api/payments".into(),
            trace_id: vec![0xab; 16],
            span_id: vec![0x01; 8],
            parent_span_id: vec![0x02; 8],
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 4_500,
            status: Some(Status { code: StatusCode::Error as i32, message: "boom".into() }),
            attributes: vec![
                string("http.route", "/api/payments"),
                KeyValue { key: "n".into(), value: Some(AnyValue { value: Some(any_value::Value::IntValue(7)) }) },
            ],
            ..Default::default()
        }]);
        let spans = decode_traces(&body).unwrap();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!((s.service.as_str(), s.name.as_str(), s.kind), ("payments", "POST /api/payments", "server"));
        assert_eq!(s.trace_id, "ab".repeat(16));
        assert_eq!((s.span_id.as_str(), s.parent_span_id.as_str()), ("0101010101010101", "0202020202020202"));
        assert_eq!(s.duration_nanos(), 3_500);
        assert_eq!(s.error.as_deref(), Some("boom"));
        assert_eq!(s.attributes, vec![("http.route".into(), "/api/payments".into()), ("n".into(), "7".into())]);
    }

    #[test]
    fn a_root_span_has_an_empty_parent_and_an_ok_status_is_no_error() {
        let body = request(vec![Span {
            name: "consume".into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            kind: SpanKind::Consumer as i32,
            status: Some(Status { code: StatusCode::Ok as i32, message: String::new() }),
            ..Default::default()
        }]);
        let s = &decode_traces(&body).unwrap()[0];
        assert_eq!((s.parent_span_id.as_str(), s.kind, s.error.clone()), ("", "consumer", None));
    }

    #[test]
    fn a_body_that_is_not_protobuf_is_an_error() {
        assert!(decode_traces(b"{\"resourceSpans\": []}").is_err());
    }
}
