//! The Metrics panel: every service's and the gateway's `/metrics`, scraped every
//! [`SCRAPE_EVERY`], turned into rates between two scrapes — requests/s, 5xx/s and p95 per
//! service and per route, events published and consumed per second, and the gateway's open
//! WebSocket connections — kept for the last [`KEEP_POINTS`] scrapes for the page's charts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::prom::{self, histogram_quantile, Sample};
use super::Shared;
use crate::stack::APP_PROCESSES;

pub const SCRAPE_EVERY: Duration = Duration::from_secs(2);
/// Points kept per target: three minutes at one scrape every 2 s.
pub const KEEP_POINTS: usize = 90;

/// One chart point of one target.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Seconds since the dashboard started.
    pub t: f64,
    pub rps: f64,
    pub errors_ps: f64,
    pub p95_ms: Option<f64>,
    pub published_ps: f64,
    pub consumed_ps: f64,
    pub ws_connections: Option<f64>,
}

/// Figures of one route over the last window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteRate {
    pub route: String,
    pub rps: f64,
    pub errors_ps: f64,
    pub p95_ms: Option<f64>,
    /// Requests since the service started.
    pub total: f64,
}

/// What two scrapes of one target say about the time between them.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub point: Point,
    pub routes: Vec<RouteRate>,
}

/// Counter growth, a reset (the process restarted) counting from zero.
fn delta(cur: f64, prev: Option<f64>) -> f64 {
    match prev {
        Some(p) if cur >= p => cur - p,
        _ => cur,
    }
}

fn key(s: &Sample) -> String {
    let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{}{{{}}}", s.name, labels.join(","))
}

/// Rates between two scrapes `dt_s` seconds apart; `prev` empty means the first scrape
/// (every counter taken as grown from zero — which the page never charts: see [`Target::push`]).
pub fn window(t: f64, dt_s: f64, prev: &[Sample], cur: &[Sample]) -> Window {
    let before: HashMap<String, f64> = prev.iter().map(|s| (key(s), s.value)).collect();
    let dt = dt_s.max(1e-3);
    let (mut req, mut err, mut published, mut consumed) = (0.0, 0.0, 0.0, 0.0);
    let mut ws = None;
    let mut routes: BTreeMap<String, (f64, f64, f64, BTreeMap<String, f64>)> = BTreeMap::new();
    let mut all_buckets: BTreeMap<String, f64> = BTreeMap::new();
    for s in cur {
        let d = delta(s.value, before.get(&key(s)).copied());
        match s.name.as_str() {
            "http_requests_total" => {
                let route = s.label("path").unwrap_or("?").to_string();
                let is_err = s.label("status").is_some_and(|c| c.starts_with('5'));
                req += d;
                let r = routes.entry(route).or_default();
                r.0 += d;
                r.2 += s.value;
                if is_err {
                    err += d;
                    r.1 += d;
                }
            }
            "http_request_duration_seconds_bucket" => {
                let (Some(route), Some(le)) = (s.label("path"), s.label("le")) else { continue };
                *routes.entry(route.to_string()).or_default().3.entry(le.to_string()).or_default() += d;
                *all_buckets.entry(le.to_string()).or_default() += d;
            }
            "events_published_total" => published += d,
            "events_consumed_total" => consumed += d,
            "gateway_ws_connections" => ws = Some(s.value),
            _ => {}
        }
    }
    let p95 = |b: &BTreeMap<String, f64>| {
        let buckets: Vec<(f64, f64)> = b
            .iter()
            .filter_map(|(le, n)| {
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((bound, *n))
            })
            .collect();
        histogram_quantile(0.95, &buckets).map(|s| (s * 1000.0 * 100.0).round() / 100.0)
    };
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let mut routes: Vec<RouteRate> = routes
        .into_iter()
        .map(|(route, (n, e, total, b))| RouteRate {
            route,
            rps: round(n / dt),
            errors_ps: round(e / dt),
            p95_ms: p95(&b),
            total,
        })
        .collect();
    routes.sort_by(|a, b| b.rps.total_cmp(&a.rps).then(b.total.total_cmp(&a.total)));
    Window {
        point: Point {
            t: round(t),
            rps: round(req / dt),
            errors_ps: round(err / dt),
            p95_ms: p95(&all_buckets),
            published_ps: round(published / dt),
            consumed_ps: round(consumed / dt),
            ws_connections: ws,
        },
        routes,
    }
}

/// One scraped process.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub url: String,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub points: VecDeque<Point>,
    pub routes: Vec<RouteRate>,
    #[serde(skip)]
    last: Option<(f64, Vec<Sample>)>,
}

impl Target {
    fn push(&mut self, t: f64, samples: Vec<Sample>) {
        if let Some((t0, prev)) = &self.last {
            let w = window(t, t - t0, prev, &samples);
            self.points.push_back(w.point);
            while self.points.len() > KEEP_POINTS {
                self.points.pop_front();
            }
            self.routes = w.routes;
        }
        self.last = Some((t, samples));
        self.up = true;
        self.error = None;
    }

    fn down(&mut self, error: String) {
        self.up = false;
        self.error = Some(error);
        self.last = None;
    }
}

/// The scraped series, shared between the scraper and the handler.
#[derive(Default)]
pub struct Store {
    targets: std::sync::Mutex<BTreeMap<String, Target>>,
}

/// Scrapes every service and the gateway until the dashboard stops.
pub async fn scrape_forever(st: Shared) {
    let client = reqwest::Client::builder().timeout(Duration::from_millis(1500)).build().expect("a plain HTTP client");
    let started = Instant::now();
    let mut tick = tokio::time::interval(SCRAPE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let scrapes = futures::future::join_all(APP_PROCESSES.iter().map(|p| {
            let client = client.clone();
            async move {
                let url = format!("{}/metrics", p.url());
                let got = async {
                    let r = client.get(&url).send().await?.error_for_status()?;
                    r.text().await
                }
                .await;
                (
                    p.name,
                    url,
                    got.map_err(|e| if e.is_connect() { "connection refused".to_string() } else { e.to_string() }),
                )
            }
        }))
        .await;
        let t = started.elapsed().as_secs_f64();
        let mut targets = st.metrics.targets.lock().unwrap_or_else(|e| e.into_inner());
        for (name, url, got) in scrapes {
            let target = targets.entry(name.to_string()).or_insert_with(|| Target {
                name: name.to_string(),
                url: url.clone(),
                ..Default::default()
            });
            match got {
                Ok(text) => target.push(t, prom::parse(&text)),
                Err(e) => target.down(e),
            }
        }
    }
}

/// `GET /api/metrics`.
pub async fn get(State(st): State<Shared>) -> Json<Value> {
    let targets: Vec<Target> = {
        let map = st.metrics.targets.lock().unwrap_or_else(|e| e.into_inner());
        APP_PROCESSES.iter().filter_map(|p| map.get(p.name).cloned()).collect()
    };
    Json(json!({"intervalSeconds": SCRAPE_EVERY.as_secs_f64(), "targets": targets}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(ok: u64, failed: u64, fast: u64, slow: u64, ws: u64) -> Vec<Sample> {
        prom::parse(&format!(
            "http_requests_total{{method=\"GET\",path=\"/api/x\",status=\"200\"}} {ok}\n\
             http_requests_total{{method=\"GET\",path=\"/api/x\",status=\"503\"}} {failed}\n\
             http_request_duration_seconds_bucket{{method=\"GET\",path=\"/api/x\",status=\"200\",le=\"0.01\"}} {fast}\n\
             http_request_duration_seconds_bucket{{method=\"GET\",path=\"/api/x\",status=\"200\",le=\"0.1\"}} {}\n\
             http_request_duration_seconds_bucket{{method=\"GET\",path=\"/api/x\",status=\"200\",le=\"+Inf\"}} {}\n\
             events_published_total{{type=\"a\"}} {ok}\n\
             gateway_ws_connections {ws}\n",
            fast + slow,
            fast + slow
        ))
    }

    #[test]
    fn rates_come_from_the_growth_between_two_scrapes() {
        let prev = scrape(100, 0, 100, 0, 3);
        // 2 s later: 200 more OK (100 fast, 100 slow), 10 more 503s.
        let cur = scrape(300, 10, 200, 100, 5);
        let w = window(4.0, 2.0, &prev, &cur);
        assert_eq!(w.point.rps, 105.0);
        assert_eq!(w.point.errors_ps, 5.0);
        assert_eq!(w.point.published_ps, 100.0);
        assert_eq!(w.point.ws_connections, Some(5.0));
        // 200 observations, rank 190 falls in the 10-100 ms bucket (100 there): 10 + 90*0.9 ms.
        assert_eq!(w.point.p95_ms, Some(91.0));
        assert_eq!(w.routes.len(), 1);
        assert_eq!(w.routes[0].route, "/api/x");
        assert_eq!(w.routes[0].total, 310.0);
    }

    #[test]
    fn the_services_own_metrics_text_gives_rates_per_route() {
        // What a service's /metrics really prints (mfe_kit::metrics), not a hand-written copy.
        let m = mfe_kit::metrics::Metrics::new("payments");
        m.observe_request("GET", "/api/payments", 200, 0.004);
        let prev = prom::parse(&m.render());
        for _ in 0..18 {
            m.observe_request("GET", "/api/payments", 200, 0.004);
        }
        m.observe_request("POST", "/api/payments", 500, 0.2);
        m.observe_request("GET", "/api/payments/{id}", 200, 0.02);
        m.event_published("payments.payment.created");
        let w = window(10.0, 2.0, &prev, &prom::parse(&m.render()));
        assert_eq!(w.point.rps, 10.0);
        assert_eq!(w.point.errors_ps, 0.5);
        assert_eq!(w.point.published_ps, 0.5);
        let routes: Vec<(&str, f64, f64)> = w.routes.iter().map(|r| (r.route.as_str(), r.rps, r.errors_ps)).collect();
        assert_eq!(routes, [("/api/payments", 9.5, 0.5), ("/api/payments/{id}", 0.5, 0.0)]);
        let p95 = w.point.p95_ms.expect("a p95");
        assert!(p95 > 4.0 && p95 <= 250.0, "{p95}");
    }

    #[test]
    fn a_restarted_process_counts_from_zero_and_an_idle_one_has_no_p95() {
        let prev = scrape(1000, 0, 1000, 0, 0);
        let cur = scrape(4, 0, 4, 0, 0);
        assert_eq!(window(2.0, 2.0, &prev, &cur).point.rps, 2.0);
        let idle = window(2.0, 2.0, &prev, &prev);
        assert_eq!((idle.point.rps, idle.point.p95_ms), (0.0, None));
    }
}
