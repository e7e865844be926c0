//! The windows a running system opens for standard tools, looked through
//! with clients that are not ours: HTTP GETs, a Prometheus text parser, the
//! standard gRPC health and reflection clients, and headless Chromium
//! driven over its DevTools protocol.

use super::process::{DEADLINE, runtime};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// `GET url` (`http://host:port/path`) over HTTP/1.1: the status and the
/// body, or `None` when nothing answers.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    http_get_with(url, None).map(|(status, _, body)| (status, body))
}

/// [`http_get`] with an `Accept` header: the status, the `Content-Type`
/// and the body.
pub fn http_get_with(url: &str, accept: Option<&str>) -> Option<(u16, String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{accept}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    // hyper sends a body of known length as is (no chunking).
    Some((status, content_type, body.to_string()))
}

/// Parses a Prometheus text (either form) with `prometheus-parse`.
pub fn parse_metrics(body: &str) -> prometheus_parse::Scrape {
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("a Prometheus text")
}

/// `/metrics` at `http_url` (asked as `curl` asks: the classic text),
/// parsed by `prometheus-parse`.
pub fn scrape(http_url: &str) -> Option<prometheus_parse::Scrape> {
    let (status, body) = http_get(&format!("{http_url}/metrics"))?;
    assert_eq!(status, 200, "/metrics answered {status}: {body}");
    Some(parse_metrics(&body))
}

/// The value of the sample `name` whose labels include `labels`, if any.
pub fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .and_then(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// The overall health (`service = ""`) of the daemon at `url`, or `None`
/// when it does not answer.
pub fn health(url: &str, service: &str) -> Option<ServingStatus> {
    runtime().block_on(async {
        let ch = Channel::from_shared(url.to_string())
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()?;
        let r = HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(r.into_inner().status).ok()
    })
}

/// The services the daemon at `url` lists through gRPC server reflection
/// (v1), sorted.
pub fn reflected_services(url: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    runtime().block_on(async {
        let ch = Channel::from_shared(url.to_string())
            .expect("url")
            .connect()
            .await
            .expect("connect for reflection");
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .expect("reflection answers")
            .into_inner();
        let reply = replies
            .message()
            .await
            .expect("a reflection reply")
            .expect("one reply");
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("not a service list: {reply:?}");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        names
    })
}

/// Headless Chromium with one page, driven over the DevTools protocol;
/// killed when dropped.
pub struct Browser {
    child: Child,
    ws: tungstenite::WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// The browser to run: `$CHROMIUM`, else the first of the usual names
/// found on `PATH`. `.ci/run` installs Debian's `chromium` when none is.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("no Chromium found (set CHROMIUM, or install Debian's `chromium`; .ci/run does)");
}

impl Browser {
    /// Starts Chromium and opens `url` in a new page.
    pub fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("a profile directory");
        let child = Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox", // CI runs as root
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1280,800",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Chromium");
        // Chromium writes the port it chose, and the browser's WebSocket
        // path, once it listens.
        let file = profile.path().join("DevToolsActivePort");
        let start = Instant::now();
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.to_string(), path.to_string());
                }
            }
            assert!(start.elapsed() < DEADLINE, "Chromium did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        let stream = TcpStream::connect(format!("127.0.0.1:{port}")).expect("DevTools port");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let (ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), stream)
            .expect("DevTools WebSocket");
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = b.call("Target.createTarget", serde_json::json!({ "url": url }));
        let target_id = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = b.call(
            "Target.attachToTarget",
            serde_json::json!({ "targetId": target_id, "flatten": true }),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        b
    }

    /// Sends one DevTools command (to the page once attached) and returns
    /// its result, skipping the events that come meanwhile.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = serde_json::json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = serde_json::Value::String(self.session.clone());
        }
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .expect("send to Chromium");
        loop {
            let reply = self.ws.read().expect("read from Chromium");
            let tungstenite::Message::Text(text) = reply else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text).expect("DevTools JSON");
            if v["id"].as_u64() == Some(id) {
                assert!(v["error"].is_null(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page; its value (JSON), or `None` when it
    /// threw (the page not loaded yet, say).
    pub fn eval(&mut self, expr: &str) -> Option<serde_json::Value> {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expr, "returnByValue": true }),
        );
        if !r["exceptionDetails"].is_null() {
            return None;
        }
        Some(r["result"]["value"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
