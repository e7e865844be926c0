//! The benchmark tool never rots: `bench --quick` runs every scenario to the
//! end, writes its JSON report and draws its charts. Its figures mean little
//! with `--quick`, so nothing here looks at a timing or at whether a target
//! was met; only at whether each scenario ran and produced what it should.
//! `bench chaos --quick` (not part of the default run) is a check of data:
//! 20 s of seeded faults, then nothing lost, doubled, unexpected or
//! divergent. `bench scale --quick` (not part of it either) builds its
//! systems with 1,000 users instead of 100,000.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every scenario, in the order the bench runs them.
const SCENARIOS: [&str; 7] = [
    "echo",
    "post",
    "delivery",
    "timeline-open",
    "failover",
    "resync",
    "quiet-cycle",
];

/// The scenarios outside the default run, as `--help` lists them after it.
const EXTRA_SCENARIOS: [&str; 2] = ["chaos", "scale"];

/// How long a whole `--quick` run may take before it counts as hung: it
/// takes well under a minute, but debug binaries on a busy 2-core machine
/// are slow, and this is a hang detector, not a measurement.
const RUN_DEADLINE: Duration = Duration::from_secs(600);

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Runs `bench` with `args`; kills it and panics if it outlives `RUN_DEADLINE`.
fn bench(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bench");
    // Drain both pipes while it runs, so that a full pipe cannot stall it.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for bench") {
            break st;
        }
        if start.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).to_string();
            let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).to_string();
            panic!(
                "bench {args:?} still running after {RUN_DEADLINE:?}; killed it\n\
                 --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Keeps the scratch directory (every process's log) when the test fails.
struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("scratch dir").path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if (std::thread::panicking() || std::env::var_os("TEST_KEEP").is_some())
            && let Some(d) = self.0.take()
        {
            eprintln!("bench output, data and logs kept in {}", d.keep().display());
        }
    }
}

#[test]
fn quick_run_completes_every_scenario_with_json_and_charts() {
    let tmp = Scratch(Some(tempfile::tempdir().expect("tempdir")));
    let json_path = tmp.path().join("b.json");
    let plots = tmp.path().join("plots");
    let scratch = tmp.path().join("scratch");
    let path_arg = |p: &Path| p.to_str().expect("utf-8 temp path").to_string();
    let (json_arg, plots_arg, scratch_arg) =
        (path_arg(&json_path), path_arg(&plots), path_arg(&scratch));
    let out = bench(&[
        "--quick",
        "--json",
        &json_arg,
        "--plot",
        &plots_arg,
        "--scratch",
        &scratch_arg,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // Every failure below shows what the bench printed.
    let context = format!("\n--- bench stdout ---\n{stdout}\n--- bench stderr ---\n{stderr}");

    assert!(
        out.status.success(),
        "bench --quick exited with {}{context}",
        out.status
    );

    let text = std::fs::read_to_string(&json_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}{context}", json_path.display()));
    let report: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}{context}", json_path.display()));
    let outcomes = report["outcomes"]
        .as_array()
        .unwrap_or_else(|| panic!("no `outcomes` array in the JSON report{context}"));
    let names: Vec<&str> = outcomes
        .iter()
        .map(|o| o["scenario"].as_str().unwrap_or("<no name>"))
        .collect();
    assert_eq!(names, SCENARIOS, "scenarios in the report{context}");

    let mut charts = 0;
    for o in outcomes {
        let name = o["scenario"].as_str().unwrap_or_default();
        assert!(
            o["error"].is_null(),
            "scenario {name} failed: {}{context}",
            o["error"]
        );
        let rows = o["rows"].as_array();
        assert!(
            rows.is_some_and(|r| !r.is_empty()),
            "scenario {name} has no rows: {}{context}",
            o["rows"]
        );
        let Some(list) = o["charts"].as_array() else {
            panic!("scenario {name} has no `charts` array{context}");
        };
        for c in list {
            let file = c["file"]
                .as_str()
                .unwrap_or_else(|| panic!("a chart of {name} names no file: {c}{context}"));
            let png = plots.join(file);
            let bytes = std::fs::read(&png)
                .unwrap_or_else(|e| panic!("chart {} of {name}: {e}{context}", png.display()));
            assert!(
                bytes.starts_with(&PNG_SIGNATURE),
                "chart {} of {name} is not a PNG ({} bytes){context}",
                png.display(),
                bytes.len()
            );
            charts += 1;
        }
    }
    assert!(charts > 0, "the report names no chart at all{context}");
}

/// A row's value in a scenario of the JSON report.
fn row(outcome: &serde_json::Value, what: &str) -> Option<f64> {
    outcome["rows"]
        .as_array()?
        .iter()
        .find(|r| r["what"].as_str() == Some(what))?["value"]
        .as_f64()
}

#[test]
fn quick_chaos_run_loses_and_doubles_nothing() {
    let tmp = Scratch(Some(tempfile::tempdir().expect("tempdir")));
    let json_path = tmp.path().join("chaos.json");
    let scratch = tmp.path().join("scratch");
    let path_arg = |p: &Path| p.to_str().expect("utf-8 temp path").to_string();
    let (json_arg, scratch_arg) = (path_arg(&json_path), path_arg(&scratch));
    // A fixed seed: the same fault schedule every time (what the system
    // makes of it still varies; the checks are about data only).
    let out = bench(&[
        "chaos",
        "--quick",
        "--seed",
        "11",
        "--json",
        &json_arg,
        "--scratch",
        &scratch_arg,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let context = format!("\n--- bench stdout ---\n{stdout}\n--- bench stderr ---\n{stderr}");
    let text = std::fs::read_to_string(&json_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}{context}", json_path.display()));
    let report: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}{context}", json_path.display()));
    let o = &report["outcomes"][0];
    assert_eq!(o["scenario"].as_str(), Some("chaos"), "{context}");
    assert!(
        o["error"].is_null(),
        "chaos failed: {}{context}",
        o["error"]
    );
    assert!(
        out.status.success(),
        "bench chaos --quick exited with {}{context}",
        out.status
    );
    for what in ["lost", "doubled", "unexpected", "divergent"] {
        assert_eq!(row(o, what), Some(0.0), "row {what:?}{context}");
    }
    assert!(
        row(o, "posts acknowledged").is_some_and(|n| n > 0.0),
        "no post was acknowledged{context}"
    );
    assert!(
        row(o, "faults").is_some_and(|n| n > 0.0),
        "no fault was injected{context}"
    );
}

#[test]
fn quick_scale_run_reports_every_figure() {
    let tmp = Scratch(Some(tempfile::tempdir().expect("tempdir")));
    let json_path = tmp.path().join("scale.json");
    let scratch = tmp.path().join("scratch");
    let path_arg = |p: &Path| p.to_str().expect("utf-8 temp path").to_string();
    let (json_arg, scratch_arg) = (path_arg(&json_path), path_arg(&scratch));
    let out = bench(&[
        "scale",
        "--quick",
        "--json",
        &json_arg,
        "--scratch",
        &scratch_arg,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let context = format!("\n--- bench stdout ---\n{stdout}\n--- bench stderr ---\n{stderr}");
    let text = std::fs::read_to_string(&json_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}{context}", json_path.display()));
    let report: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}{context}", json_path.display()));
    let o = &report["outcomes"][0];
    assert_eq!(o["scenario"].as_str(), Some("scale"), "{context}");
    assert!(
        o["error"].is_null(),
        "scale failed: {}{context}",
        o["error"]
    );
    assert!(
        out.status.success(),
        "bench scale --quick exited with {}{context}",
        out.status
    );
    // Each figure is there, beside its baseline (what it is, not how fast).
    for what in [
        "Login/s, 1,000 users",
        "master RSS growth, 1,000 users",
        "LIST p50, 1,000 users",
        "LIST p50, 10,000 users",
        "timeline open p50, follows 200",
    ] {
        let r = o["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["what"].as_str() == Some(what)));
        assert!(
            r.is_some_and(|r| r["value"].is_number() && r["baseline"]["value"].is_number()),
            "row {what:?} with a baseline{context}"
        );
    }
    assert!(
        o["rows"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["what"]
                .as_str()
                .is_some_and(|w| w.starts_with("Follow/s")))),
        "no Follow/s row{context}"
    );
}

#[test]
fn help_names_every_scenario() {
    let out = bench(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench --help exited with {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // clap lists the scenario argument's values; whitespace is folded in
    // case the help is ever wrapped.
    let folded = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let listed: Vec<&str> = folded
        .split_once("[possible values: ")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(values, _)| values.split(", ").collect())
        .unwrap_or_default();
    let all: Vec<&str> = SCENARIOS.iter().chain(&EXTRA_SCENARIOS).copied().collect();
    assert_eq!(listed, all, "the scenarios bench --help lists:\n{help}");
}

#[test]
fn a_bad_flag_exits_2() {
    let out = bench(&["--levels", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "bench --levels 0: {}; stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.starts_with("error:") && stderr.contains("--levels"),
        "bench --levels 0 does not say what is wrong: {stderr}"
    );
}
