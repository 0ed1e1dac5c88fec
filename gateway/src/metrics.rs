//! Prometheus metrics of a gateway, served on the admin listener.

use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChallengeLabel {
    pub challenge: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabel {
    pub policy: &'static str,
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Access decisions by route policy and outcome (`allowed`,
    /// `unauthorized`, `forbidden`).
    pub auth_decisions: Family<AuthLabel, Counter>,
    /// Live relay sessions by transport.
    pub sessions: Family<TransportLabel, Gauge>,
    /// Relay handshakes by outcome (`ok` or the reject reason).
    pub handshakes: Family<OutcomeLabel, Counter>,
    /// Requests answered, by status code.
    pub requests: Family<CodeLabel, Counter>,
    /// Requests answered by the gateway itself (not the relay), by kind.
    pub request_errors: Family<OutcomeLabel, Counter>,
    /// Time from request to response head.
    pub request_duration: Histogram,
    /// Relay ↔ gateway round trip, as measured by relays' heartbeats.
    pub relay_rtt: Histogram,
    /// Tunnel streams open now.
    pub streams_open: Gauge,
    /// TLS handshakes for a name no relay is registered for (no certificate).
    pub unknown_sni: Counter,
    /// ACME orders by outcome (`valid`, `invalid`, `rate_limited`, `error`,
    /// `budget_exhausted`).
    pub acme_orders: Family<OutcomeLabel, Counter>,
    /// ACME challenges the CA could not validate, by type.
    pub acme_challenge_failures: Family<ChallengeLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("routehub");
        let m = Metrics {
            auth_decisions: Family::default(),
            sessions: Family::default(),
            handshakes: Family::default(),
            requests: Family::default(),
            request_errors: Family::default(),
            request_duration: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            relay_rtt: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            streams_open: Gauge::default(),
            unknown_sni: Counter::default(),
            acme_orders: Family::default(),
            acme_challenge_failures: Family::default(),
            registry: Registry::default(),
        };
        // Both transports always appear, at 0 when unused.
        for transport in ["quic", "tcp"] {
            let _ = m.sessions.get_or_create(&TransportLabel { transport });
        }
        registry.register("relay_sessions", "Live relay sessions", m.sessions.clone());
        registry.register(
            "auth_decisions",
            "Access decisions by route policy and outcome",
            m.auth_decisions.clone(),
        );
        registry.register("relay_handshakes", "Relay handshakes by outcome", m.handshakes.clone());
        registry.register("http_requests", "HTTP requests answered, by status", m.requests.clone());
        registry.register(
            "http_request_errors",
            "Requests the gateway answered itself, by reason",
            m.request_errors.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head",
            m.request_duration.clone(),
        );
        registry.register("relay_rtt_seconds", "Relay heartbeat round trip", m.relay_rtt.clone());
        registry.register("tunnel_streams_open", "Tunnel streams open", m.streams_open.clone());
        registry.register(
            "tls_unknown_sni",
            "TLS handshakes for unregistered names",
            m.unknown_sni.clone(),
        );
        registry.register("acme_orders", "ACME orders by outcome", m.acme_orders.clone());
        registry.register(
            "acme_challenge_failures",
            "ACME challenges the CA could not validate, by type",
            m.acme_challenge_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Adds the certificate expiry gauges, read from `certs` at each scrape.
    pub fn watch_certificates(&mut self, certs: certs::CertManager) {
        self.registry
            .register_collector(Box::new(CertExpiryCollector { certs }));
    }

    /// Where the certificate manager reports ACME events.
    pub fn cert_events(&self) -> std::sync::Arc<dyn certs::CertEvents> {
        std::sync::Arc::new(CertEventCounters {
            orders: self.acme_orders.clone(),
            challenge_failures: self.acme_challenge_failures.clone(),
        })
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String can't fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

struct CertEventCounters {
    orders: Family<OutcomeLabel, Counter>,
    challenge_failures: Family<ChallengeLabel, Counter>,
}

impl certs::CertEvents for CertEventCounters {
    fn order_finished(&self, outcome: &'static str) {
        self.orders.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    fn challenge_failed(&self, challenge: &'static str) {
        self.challenge_failures
            .get_or_create(&ChallengeLabel { challenge })
            .inc();
    }
}

/// Upper bounds (days) of the expiry buckets; cumulative like histogram
/// buckets, so one series per bound whatever the number of certificates.
pub const EXPIRY_BUCKET_DAYS: [u64; 5] = [1, 7, 14, 30, 60];

/// Certificates served by days to expiry, and the soonest expiry.
#[derive(Debug)]
struct CertExpiryCollector {
    certs: certs::CertManager,
}

/// Counts of `expiries` at or below each bucket bound, then the total.
pub fn expiry_buckets(now: SystemTime, expiries: &[SystemTime]) -> Vec<(String, i64)> {
    let left: Vec<Duration> = expiries
        .iter()
        .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO))
        .collect();
    let mut out: Vec<(String, i64)> = EXPIRY_BUCKET_DAYS
        .iter()
        .map(|d| {
            let bound = Duration::from_secs(d * 86_400);
            (d.to_string(), left.iter().filter(|l| **l <= bound).count() as i64)
        })
        .collect();
    out.push(("+Inf".into(), left.len() as i64));
    out
}

impl Collector for CertExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = self.certs.clock().now();
        let expiries = self.certs.expiries();
        let buckets = expiry_buckets(now, &expiries);
        let mut family = encoder.encode_descriptor(
            "tls_certificates_expiring",
            "Certificates served that expire within the given number of days",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (within_days, count) in &buckets {
            let labels = [("within_days", within_days.as_str())];
            ConstGauge::new(*count).encode(family.encode_family(&labels)?)?;
        }
        if let Some(soonest) = expiries.iter().min() {
            let secs = match soonest.duration_since(now) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => -(e.duration().as_secs() as i64),
            };
            let gauge = ConstGauge::new(secs);
            let metric = encoder.encode_descriptor(
                "tls_certificate_soonest_expiry_seconds",
                "Seconds until the first certificate served expires (negative: expired)",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_buckets_are_cumulative() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let day = Duration::from_secs(86_400);
        let expiries = [now - day, now + day / 2, now + day * 10, now + day * 89];
        let b = expiry_buckets(now, &expiries);
        let get = |k: &str| b.iter().find(|(l, _)| l == k).map(|(_, v)| *v);
        assert_eq!(get("1"), Some(2), "expired and half a day left");
        assert_eq!(get("7"), Some(2));
        assert_eq!(get("14"), Some(3));
        assert_eq!(get("60"), Some(3));
        assert_eq!(get("+Inf"), Some(4));
    }
}
