//! The process's metrics: one registry, typed handles, the text form.
//!
//! One registry per process ([`metrics`]), made on first use: a metric is
//! an atomic (a histogram a short lock) that the code which does the work
//! bumps where it does it, so the write path pays a few nanoseconds and no
//! lookup. What is a reading of state rather than a count (ages, the
//! coordinator's table) is set just before it is written out ([`encode`]),
//! by the callback the daemon registered ([`set_refresh`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex};

/// A gRPC method, `/package.Service/Method`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// A method and the gRPC status code it failed with (`UNAVAILABLE`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub method: String,
    pub code: String,
}

/// A role a server can be in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

/// One process in the coordinator's table.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessLabels {
    pub kind: String,
    pub cluster: String,
    pub server: String,
}

/// A cluster, in the coordinator's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency() -> Histogram {
    // 50 µs to about 3.3 s, doubling: a loopback RPC to a resync.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// Every metric of this process. Daemons only bump what applies to them;
/// the rest stays at zero, so one dashboard query works for all.
pub struct Metrics {
    registry: Registry,
    // Every daemon.
    pub rpc_requests: Family<MethodLabels, Counter>,
    pub rpc_errors: Family<ErrorLabels, Counter>,
    pub rpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub serving: Gauge,
    pub heartbeat_age: FloatGauge,
    // Servers.
    pub role: Family<RoleLabels, Gauge>,
    pub epoch: Gauge,
    pub in_service: Gauge,
    pub posts_written: Counter,
    pub writes_acknowledged: Counter,
    pub mirror_batches: Counter,
    pub mirror_ops: Counter,
    pub mirror_duration: Histogram,
    pub fsyncs: Counter,
    pub journal_bytes: Gauge,
    pub open_streams: Gauge,
    pub resyncs: Counter,
    // Synchronizers.
    pub sync_pushes: Counter,
    pub sync_behind: Gauge,
    pub sync_lag: FloatGauge,
    // The coordinator.
    pub table_heartbeat_age: Family<ProcessLabels, FloatGauge>,
    pub table_alive: Family<ProcessLabels, Gauge>,
    pub table_epoch: Family<ClusterLabels, Gauge>,
    pub promotions: Counter,
    /// Sets the readings of state just before the text is written.
    refresh: Mutex<Option<Refresh>>,
}

/// A daemon's callback that reads its state into gauges.
type Refresh = Box<dyn Fn(&Metrics) + Send + Sync>;

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Registers the callback that sets the state readings before each
/// [`encode`] (the coordinator's table, a heartbeat's age).
pub fn set_refresh(f: impl Fn(&Metrics) + Send + Sync + 'static) {
    let mut slot = metrics().refresh.lock().unwrap_or_else(|p| p.into_inner());
    *slot = Some(Box::new(f));
}

/// When the coordinator last answered one of our heartbeats.
static LAST_ANSWER: Mutex<Option<std::time::Instant>> = Mutex::new(None);

/// Records an answered heartbeat; `sns_heartbeat_age_seconds` counts from
/// the latest.
pub fn note_heartbeat_answered() {
    let mut last = LAST_ANSWER.lock().unwrap_or_else(|p| p.into_inner());
    *last = Some(std::time::Instant::now());
}

/// The two text forms a scraper may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0: what Prometheus asks for first (its `Accept`
    /// header names it), with units and `# EOF`.
    OpenMetrics,
    /// The Prometheus text format 0.0.4: for everyone else (`curl`, the
    /// classic parsers of the client libraries), whose counters are typed
    /// under their `_total` names.
    Prometheus,
}

impl Format {
    /// The form a request's `Accept` header asks for: OpenMetrics when it
    /// names it, the classic text otherwise (as Prometheus's own exporters
    /// choose).
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The text of every metric, in `format`, both written by the crate.
pub fn encode(format: Format) -> String {
    let m = metrics();
    if let Some(t) = *LAST_ANSWER.lock().unwrap_or_else(|p| p.into_inner()) {
        m.heartbeat_age.set(t.elapsed().as_secs_f64());
    }
    {
        let slot = m.refresh.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = slot.as_ref() {
            f(m);
        }
    }
    encode_registry(&m.registry, format)
}

fn encode_registry(registry: &Registry, format: Format) -> String {
    use prometheus_client::encoding::{prometheus_text, text};
    let mut out = String::new();
    let written = match format {
        Format::OpenMetrics => text::encode(&mut out, registry),
        Format::Prometheus => prometheus_text::encode(&mut out, registry),
    };
    // Writing to a String cannot fail; a metric that could not be written
    // would be a bug in the crate, and the scrape says so.
    if let Err(e) = written {
        out = format!("# cannot encode the metrics: {e}\n");
    }
    out
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("sns");
        let m = Metrics {
            rpc_requests: Family::default(),
            rpc_errors: Family::default(),
            rpc_duration: Family::new_with_constructor(latency as fn() -> Histogram),
            serving: Gauge::default(),
            heartbeat_age: FloatGauge::default(),
            role: Family::default(),
            epoch: Gauge::default(),
            in_service: Gauge::default(),
            posts_written: Counter::default(),
            writes_acknowledged: Counter::default(),
            mirror_batches: Counter::default(),
            mirror_ops: Counter::default(),
            mirror_duration: latency(),
            fsyncs: Counter::default(),
            journal_bytes: Gauge::default(),
            open_streams: Gauge::default(),
            resyncs: Counter::default(),
            sync_pushes: Counter::default(),
            sync_behind: Gauge::default(),
            sync_lag: FloatGauge::default(),
            table_heartbeat_age: Family::default(),
            table_alive: Family::default(),
            table_epoch: Family::default(),
            promotions: Counter::default(),
            refresh: Mutex::new(None),
            registry: Registry::default(),
        };
        r.register(
            "rpc_requests",
            "gRPC calls served, by method",
            m.rpc_requests.clone(),
        );
        r.register(
            "rpc_errors",
            "gRPC calls answered with an error status, by method and code",
            m.rpc_errors.clone(),
        );
        r.register_with_unit(
            "rpc_duration",
            "Time from a call's arrival to its response headers, by method",
            Unit::Seconds,
            m.rpc_duration.clone(),
        );
        r.register(
            "serving",
            "1 when the process can do its job now (the gRPC health status)",
            m.serving.clone(),
        );
        r.register_with_unit(
            "heartbeat_age",
            "Time since the coordinator last answered this process's heartbeat",
            Unit::Seconds,
            m.heartbeat_age.clone(),
        );
        r.register(
            "role",
            "1 for the role this server has now (starting, master, slave)",
            m.role.clone(),
        );
        r.register(
            "epoch",
            "The highest cluster epoch this server has seen",
            m.epoch.clone(),
        );
        r.register(
            "in_service",
            "A slave: 1 when the coordinator counts it in service. A master: 1 when it has an in-service slave",
            m.in_service.clone(),
        );
        r.register(
            "posts_written",
            "Posts acknowledged to clients by this server as master",
            m.posts_written.clone(),
        );
        r.register(
            "writes_acknowledged",
            "Writes (users, follows, posts) acknowledged to clients by this server as master",
            m.writes_acknowledged.clone(),
        );
        r.register(
            "mirror_batches",
            "Batches this master committed: journaled, and stored by its in-service slave if it has one",
            m.mirror_batches.clone(),
        );
        r.register(
            "mirror_ops",
            "Operations in the batches this master committed",
            m.mirror_ops.clone(),
        );
        r.register_with_unit(
            "mirror_duration",
            "Time of one mirroring round trip, the slave's journal flush included",
            Unit::Seconds,
            m.mirror_duration.clone(),
        );
        r.register(
            "fsyncs",
            "Journal flushes (fdatasync) by this server",
            m.fsyncs.clone(),
        );
        r.register_with_unit(
            "journal",
            "Size of journal.txt",
            Unit::Bytes,
            m.journal_bytes.clone(),
        );
        r.register(
            "open_streams",
            "Timeline streams open on this server",
            m.open_streams.clone(),
        );
        r.register(
            "resyncs",
            "Resyncs this server finished as a slave",
            m.resyncs.clone(),
        );
        r.register(
            "sync_pushes",
            "Pushes to other clusters' synchronizers that they acknowledged",
            m.sync_pushes.clone(),
        );
        r.register(
            "sync_behind",
            "Source files with changes not yet acknowledged by every peer",
            m.sync_behind.clone(),
        );
        r.register_with_unit(
            "sync_lag",
            "How long this synchronizer has had changes it could not deliver (0: none)",
            Unit::Seconds,
            m.sync_lag.clone(),
        );
        r.register_with_unit(
            "table_heartbeat_age",
            "Coordinator: time since each process's last heartbeat",
            Unit::Seconds,
            m.table_heartbeat_age.clone(),
        );
        r.register(
            "table_alive",
            "Coordinator: 1 for a process heard from within the failure window",
            m.table_alive.clone(),
        );
        r.register(
            "table_epoch",
            "Coordinator: each cluster's epoch",
            m.table_epoch.clone(),
        );
        r.register(
            "promotions",
            "Coordinator: masters made since it started (first masters and failovers)",
            m.promotions.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Records a server's role: 1 for it, 0 for the others.
    pub fn set_role(&self, role: &str) {
        for r in ["starting", "master", "slave"] {
            self.role
                .get_or_create(&RoleLabels { role: r.into() })
                .set(i64::from(r == role));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_every_family_and_counts_move() {
        // A registry of its own: the process's metrics are shared with the
        // tests that run beside this one (a heartbeat sets the role).
        let m = Metrics::new();
        m.posts_written.inc();
        let method = MethodLabels {
            method: "/tinysns.SnsService/Login".into(),
        };
        m.rpc_requests.get_or_create(&method).inc();
        m.rpc_duration.get_or_create(&method).observe(0.001);
        m.set_role("master");
        let text = encode_registry(&m.registry, Format::OpenMetrics);
        for name in [
            "sns_rpc_requests_total{method=\"/tinysns.SnsService/Login\"} 1",
            "sns_rpc_duration_seconds_bucket",
            "sns_posts_written_total",
            "sns_mirror_duration_seconds",
            "sns_role{role=\"master\"} 1",
            "sns_role{role=\"slave\"} 0",
            "# EOF",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }

    #[test]
    fn both_forms_type_counters_under_the_names_their_parsers_expect() {
        let m = Metrics::new();
        m.posts_written.inc();
        let classic = encode_registry(&m.registry, Format::Prometheus);
        assert!(
            classic.contains("# TYPE sns_posts_written_total counter\nsns_posts_written_total 1\n")
        );
        assert!(!classic.contains("# EOF"));
        let open = encode_registry(&m.registry, Format::OpenMetrics);
        assert!(open.contains("# TYPE sns_posts_written counter\n"));
        assert!(open.ends_with("# EOF\n"));
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_classic_text() {
        // Prometheus 2.x and 3.x send this (with other versions listed).
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,\
            application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
    }
}
