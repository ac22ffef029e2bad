//! A local OTLP/HTTP collector: records every `POST /v1/traces` body and decodes the spans, so a
//! test can check what a service exported without running an OpenTelemetry collector.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::{body::Bytes, extract::State, routing::post, Router};

type Bodies = Arc<Mutex<Vec<Bytes>>>;

/// One span as received: the kit's decoding of an export body ([`mfe_kit::otlp`]).
pub use mfe_kit::otlp::ReceivedSpan as ExportedSpan;

/// The collector: listening on a free port of 127.0.0.1 until dropped with its runtime.
pub struct Collector {
    pub addr: SocketAddr,
    bodies: Bodies,
}

impl Collector {
    /// Starts listening.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start() -> Self {
        let bodies: Bodies = Arc::default();
        let app = Router::new()
            .route(
                "/v1/traces",
                post(|State(b): State<Bodies>, body: Bytes| async move {
                    b.lock().expect("collector lock").push(body);
                    ""
                }),
            )
            .with_state(bodies.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the otlp collector");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        Self { addr, bodies }
    }

    /// The value of `OTEL_EXPORTER_OTLP_ENDPOINT` that sends here.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    ///
    /// # Panics
    /// When a body is not an OTLP protobuf export request.
    pub fn spans(&self) -> Vec<ExportedSpan> {
        decode(&self.bodies.lock().expect("collector lock"))
    }
}

fn decode(bodies: &[Bytes]) -> Vec<ExportedSpan> {
    bodies.iter().flat_map(|b| mfe_kit::otlp::decode_traces(b).expect("an otlp protobuf body")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{any_value, AnyValue, KeyValue},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };
    use prost::Message;

    #[tokio::test]
    async fn a_posted_export_request_is_decoded_into_spans_with_hex_ids() {
        let collector = Collector::start().await;
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue { value: Some(any_value::Value::StringValue("svc".into())) }),
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: "GET /x".into(),
                        trace_id: vec![0xab; 16],
                        span_id: vec![0x01; 8],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut body = Vec::new();
        req.encode(&mut body).unwrap();
        let mut stream = tokio::net::TcpStream::connect(collector.addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        let spans = collector.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].service, "svc");
        assert_eq!(spans[0].name, "GET /x");
        assert_eq!(spans[0].trace_id, "ab".repeat(16));
        assert_eq!(spans[0].span_id, "01".repeat(8));
        assert_eq!(spans[0].parent_span_id, "");
    }
}
