//! The embedded demo: the real binary serves non-zero IPM gauges within seconds and stops
//! cleanly on SIGINT; and librdkafka's mock cluster, which the demo runs on, supports what the
//! pipeline relies on (commit metadata, reading commits back in the rebalance callback, and
//! rebuilding state from them after a restart).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipm_stream::metrics::names;
use rdkafka::mocking::MockCluster;

use crate::pipeline::{partition_events, produce_partitions};
use crate::support::kafka;
use crate::support::reference::RefEvent;
use crate::support::service::{get, parse_metrics, test_config, wait_for_metrics, InProcess};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("bound address").port()
}

/// Largest value among series of `metric`.
fn largest(metrics: &std::collections::BTreeMap<String, f64>, metric: &str) -> f64 {
    let prefix = format!("{metric}{{");
    metrics
        .iter()
        .filter(|(series, value)| series.starts_with(&prefix) && value.is_finite())
        .map(|(_, value)| *value)
        .fold(0.0, f64::max)
}

#[tokio::test]
async fn demo_binary_serves_ipm_gauges_within_seconds_and_stops_on_sigint() {
    let port = free_port();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ipm-stream"))
        .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--seed", "5", "--refresh"])
        .arg("200ms")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the ipm-stream binary starts");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    // The server may not be listening yet: retry connection errors until the deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        if let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await {
            let metrics = parse_metrics(&response.text().await.unwrap());
            if largest(&metrics, names::IPM) > 0.0 {
                break metrics;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the demo exited early with {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no non-zero IPM gauge within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let first_ipm = started.elapsed();
    assert!(largest(&metrics, names::WINDOW_IMPRESSIONS) > 0.0);
    assert_eq!(metrics[names::READY], 1.0);
    let (status, body) = get(addr, "/v1/ipm?window=1m").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"window\":\"1m\""), "{body}");

    // Let the view read the first records back from the output topic before stopping.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let interrupted = Instant::now();
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if interrupted.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the demo did not exit within 20 s of SIGINT");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stopped = interrupted.elapsed();
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    eprintln!("first non-zero IPM after {first_ipm:?}; exited {stopped:?} after SIGINT");
    assert!(exit.success(), "{exit}\n{stderr}");
    assert!(stopped < Duration::from_secs(15), "{stopped:?}");
    // Not a terminal: plain log lines, no escape sequences.
    assert!(stdout.contains(" ev/s, read "), "{stdout}");
    assert!(stdout.contains(" impressions, ") && !stdout.contains('\x1b'), "{stdout}");
    // The simulator flushed and summed up its run: the demo went through its whole stop.
    assert!(stderr.contains("simulated ") && stderr.contains(" 0 failed"), "{stderr}");
}

/// Events for two partitions of one kind, shifted so that both topics overlap in time.
fn events(seed: u64, install: bool, step_ms: i64, count: usize) -> Vec<Vec<RefEvent>> {
    (0..2).map(|p| partition_events(seed + p, install, step_ms, count)).collect()
}

#[tokio::test]
async fn mock_cluster_keeps_commit_metadata_and_rebuilds_state_after_a_restart() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    let config = test_config(&bootstrap);
    for topic in [&config.input.impressions_topic, &config.input.installs_topic] {
        cluster.create_topic(topic, 2, 1).unwrap();
    }
    cluster.create_topic(&config.output.topic, 1, 1).unwrap();
    cluster.create_topic(&config.dead_letter.topic, 1, 1).unwrap();
    let impressions = events(11, false, 700, 400);
    let installs = events(97, true, 9_000, 30);
    produce_partitions(&bootstrap, &config.input.impressions_topic, &impressions).await;
    produce_partitions(&bootstrap, &config.input.installs_topic, &installs).await;

    let service = InProcess::start(config.clone()).await;
    // Wait for published output; stopping then commits it (the drain's synchronous commit).
    let records = format!("{}{{kind=\"update\"}}", names::RECORDS_PRODUCED);
    wait_for_metrics(service.http_addr, Duration::from_secs(60), |m| {
        m.get(names::READY) == Some(&1.0) && m.get(&records).is_some_and(|r| *r > 0.0)
    })
    .await;
    tokio::time::timeout(Duration::from_secs(30), service.stop())
        .await
        .expect("the service stops on the mock cluster");

    // Offsets came back with the checkpoint the pipeline wrote as commit metadata.
    let group = config.kafka.group_id.clone();
    let topic = config.input.impressions_topic.clone();
    let read = tokio::task::spawn_blocking(move || {
        kafka::committed_offsets(&bootstrap, &group, &topic, 2)
    });
    let committed = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("committed offsets are read back in time")
        .unwrap();
    for (partition, offset, metadata) in &committed {
        assert!(*offset > 0, "partition {partition}: {committed:?}");
        let checkpoint: serde_json::Value =
            serde_json::from_str(metadata.as_deref().unwrap_or("")).expect("JSON checkpoint");
        assert!(checkpoint["replay_from"].as_i64().is_some(), "{checkpoint}");
        assert!(checkpoint["watermark_ms"].as_i64().is_some(), "{checkpoint}");
    }

    // A second run reads the commits in its rebalance callback and replays from them.
    let service = InProcess::start(config.clone()).await;
    let replayed = format!("{}{{outcome=\"replayed\"", names::EVENTS_CONSUMED);
    let metrics = wait_for_metrics(service.http_addr, Duration::from_secs(60), |m| {
        m.get(names::READY) == Some(&1.0)
            && m.iter().any(|(series, value)| series.starts_with(&replayed) && *value > 0.0)
    })
    .await;
    let counted = format!("{}{{outcome=\"counted\"", names::EVENTS_CONSUMED);
    let recounted: f64 =
        metrics.iter().filter(|(s, _)| s.starts_with(&counted)).map(|(_, v)| v).sum();
    assert_eq!(recounted, 0.0, "nothing committed is counted again");
    let (status, _) = get(service.http_addr, "/readyz").await;
    assert_eq!(status, 200);
    tokio::time::timeout(Duration::from_secs(30), service.stop())
        .await
        .expect("the restarted service stops on the mock cluster");
    drop(cluster);
}
