//! Kafka client settings: what the service's consumer and producer need for its guarantees,
//! with the user's librdkafka properties layered on top. Creating and driving the clients is
//! left to the modules that use them.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;

use crate::config::Config;

/// Settings shared by every client: brokers and the user's `kafka.librdkafka` properties.
pub fn common_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.brokers);
    apply(&mut client, &config.kafka.librdkafka);
    client
}

/// The input consumer: manual commits after output is acknowledged, committed reads only.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let mut client = common_config(config);
    client
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &config.kafka.auto_offset_reset)
        .set("isolation.level", "read_committed")
        // Range assignment gives one member the same partition number of every input topic.
        .set("partition.assignment.strategy", "range")
        .set("statistics.interval.ms", "1000");
    apply(&mut client, &config.kafka.consumer);
    client
}

/// The output producer: idempotent, acknowledged by all in-sync replicas.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut client = common_config(config);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // The partitioner of the Java client, so keys land where Java consumers expect them.
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "60000");
    apply(&mut client, &config.kafka.producer);
    client
}

/// The user's properties win over the service's defaults.
fn apply(client: &mut ClientConfig, properties: &BTreeMap<String, String>) {
    for (key, value) in properties {
        client.set(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_accept_the_production_example_security_settings() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.toml");
        let mut config = Config::load_with_env(Some(&path), Some(Default::default())).unwrap();
        config.kafka.brokers = "127.0.0.1:1".into();
        config.kafka.librdkafka.remove("ssl.ca.location");
        config.kafka.librdkafka.insert("sasl.username".into(), "u".into());
        config.kafka.librdkafka.insert("sasl.password".into(), "p".into());
        // SASL_SSL with SCRAM needs librdkafka built with TLS; creation fails without it.
        let producer: Result<rdkafka::producer::BaseProducer, _> =
            producer_config(&config).create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    #[test]
    fn user_properties_override_service_defaults() {
        let mut config = Config::default();
        config.kafka.producer.insert("linger.ms".into(), "50".into());
        config.kafka.librdkafka.insert("client.id".into(), "me".into());
        let producer = producer_config(&config);
        assert_eq!(producer.get("linger.ms"), Some("50"));
        assert_eq!(producer.get("client.id"), Some("me"));
        assert_eq!(consumer_config(&config).get("enable.auto.commit"), Some("false"));
    }
}
