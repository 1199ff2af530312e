//! A crash mid-stream: the service is killed with SIGKILL after publishing part of the
//! stream, restarted, and must still publish exactly the reference values, then exit 0 on
//! SIGTERM with its offsets committed.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipm_stream::config::Config;

use crate::pipeline::{
    create_separate_topics, final_watermark, partition_events, produce_partitions, split,
    PARTITIONS,
};
use crate::support::broker;
use crate::support::kafka::{self, TestRecord};
use crate::support::reference::{changes, value_at, RefEvent};
use crate::support::service::{
    read_output, test_config, wait_for_metrics, OUT_OF_ORDERNESS_MS, WINDOWS,
};

/// The TOML a user would write for `config` (only the keys the tests change).
fn config_toml(config: &Config, http_port: u16) -> String {
    let windows: String = WINDOWS
        .iter()
        .map(|w| {
            format!(
                "[[windows.list]]\nname = \"{}\"\nsize = \"{}ms\"\nslide = \"{}ms\"\n",
                w.name, w.size_ms, w.slide_ms
            )
        })
        .collect();
    format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\n\n\
         [kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\n\
         [input]\nimpressions_topic = \"{}\"\ninstalls_topic = \"{}\"\n\n\
         [output]\ntopic = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n\
         [windows]\nout_of_orderness = \"{}ms\"\nidle_timeout = \"1h\"\n{windows}",
        config.kafka.brokers,
        config.kafka.group_id,
        config.input.impressions_topic,
        config.input.installs_topic,
        config.output.topic,
        OUT_OF_ORDERNESS_MS,
    )
}

fn spawn_service(config_path: &std::path::Path, log_path: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).unwrap();
    Command::new(env!("CARGO_BIN_EXE_ipm-stream"))
        .arg("--config")
        .arg(config_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the ipm-stream binary starts")
}

/// Copies of the newest `count` records sent to each partition, as an attribution provider's
/// retries would be: same bytes, same partition.
fn retries(sent: &[TestRecord], count: usize) -> Vec<TestRecord> {
    let mut copies = Vec::new();
    for partition in 0..PARTITIONS {
        let of_partition: Vec<&TestRecord> =
            sent.iter().filter(|r| r.partition == Some(partition)).collect();
        copies.extend(of_partition.iter().rev().take(count).map(|r| (*r).clone()));
    }
    copies
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn restart_after_a_crash_mid_stream_still_publishes_the_reference_values() {
    let bootstrap = &broker::shared().bootstrap;
    let config = test_config(bootstrap);
    create_separate_topics(bootstrap, &config, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("ipm-stream.toml");
    let http_port = free_port();
    let toml = config_toml(&config, http_port);
    std::fs::File::create(&config_path).unwrap().write_all(toml.as_bytes()).unwrap();
    let log_path = dir.path().join("service.log");

    let impressions: Vec<Vec<RefEvent>> = (0..PARTITIONS)
        .map(|p| partition_events(31 + p as u64, false, 800 + 100 * p as i64, 600))
        .collect();
    let installs: Vec<Vec<RefEvent>> = (0..PARTITIONS)
        .map(|p| partition_events(71 + p as u64, true, 10_000 + 700 * p as i64, 50))
        .collect();
    let (impressions_first, impressions_rest) = split(&impressions, 60);
    let (installs_first, installs_rest) = split(&installs, 60);
    let impressions_sent =
        produce_partitions(bootstrap, &config.input.impressions_topic, &impressions_first).await;
    produce_partitions(bootstrap, &config.input.installs_topic, &installs_first).await;
    let first: Vec<RefEvent> =
        impressions_first.iter().chain(&installs_first).flatten().cloned().collect();
    let first_watermark =
        final_watermark(&[impressions_first.clone(), installs_first.clone()].concat());
    let first_expected = changes(&first, &WINDOWS, first_watermark);

    let mut service = spawn_service(&config_path, &log_path);
    read_output(bootstrap, &config.output.topic, Duration::from_secs(90), |out| {
        first_expected.keys().all(|k| out.values.contains_key(k))
    })
    .await;
    // Wait until every input partition has a commit carrying a checkpoint, then crash.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let committed = [&config.input.impressions_topic, &config.input.installs_topic]
            .iter()
            .flat_map(|t| {
                kafka::committed_offsets(bootstrap, &config.kafka.group_id, t, PARTITIONS)
            })
            .collect::<Vec<_>>();
        if committed.iter().all(|(_, offset, metadata)| *offset > 0 && metadata.is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpointed commit: {committed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    service.kill().expect("SIGKILL");
    service.wait().unwrap();

    // Retries of impressions counted before the crash: the rebuilt dedupe memory knows them.
    let copies = retries(&impressions_sent, 20);
    kafka::produce(bootstrap, &config.input.impressions_topic, &copies).await;
    produce_partitions(bootstrap, &config.input.impressions_topic, &impressions_rest).await;
    produce_partitions(bootstrap, &config.input.installs_topic, &installs_rest).await;
    let all: Vec<RefEvent> = impressions.iter().chain(&installs).flatten().cloned().collect();
    let expected = changes(&all, &WINDOWS, final_watermark(&[impressions, installs].concat()));

    let mut service = spawn_service(&config_path, &log_path);
    let output = read_output(bootstrap, &config.output.topic, Duration::from_secs(120), |out| {
        expected.keys().all(|k| out.values.contains_key(k))
    })
    .await;
    // Every published record holds the true window value at its end (values unknown after
    // the crash are published again, so a record may repeat an unchanged value)...
    for ((campaign, creative, window_name, end), counts) in &output.values {
        let window = WINDOWS.iter().find(|w| w.name == window_name).unwrap();
        assert_eq!(
            *counts,
            value_at(&all, window, (campaign, creative), *end),
            "{campaign}/{creative} {window_name} at {end}"
        );
    }
    // ...and every change of the true value was published.
    for (key, counts) in &expected {
        assert_eq!(output.values.get(key), Some(counts), "{key:?}");
    }

    let duplicates = format!(
        "{}{{topic=\"{}\"}}",
        ipm_stream::metrics::names::DUPLICATES,
        config.input.impressions_topic
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    wait_for_metrics(addr, Duration::from_secs(20), |m| {
        m.get(&duplicates) == Some(&(copies.len() as f64))
    })
    .await;

    // SIGTERM drains and exits 0 within the grace period.
    let status = Command::new("kill").arg("-TERM").arg(service.id().to_string()).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = service.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "no exit within the grace period");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    assert!(log.contains("drained"), "log:\n{log}");
    // The second run rebuilt its windows from the checkpointed offsets.
    assert_eq!(log.matches("window state rebuilt").count(), 1, "log:\n{log}");
    let committed = kafka::committed_offsets(
        bootstrap,
        &config.kafka.group_id,
        &config.input.impressions_topic,
        PARTITIONS,
    );
    let offsets: Vec<i64> = committed.iter().map(|(_, offset, _)| *offset).collect();
    assert_eq!(offsets, [620, 620, 620]);
}
