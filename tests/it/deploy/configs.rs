//! The TOML files the Kubernetes manifests mount load with the service's own loader, with
//! the credentials the Deployment sets from its Secret.

use std::collections::HashMap;
use std::path::Path;

use ipm_stream::Config;

const FILES: [&str; 2] = [
    "deploy/kubernetes/base/ipm-stream.toml",
    "deploy/kubernetes/overlays/production/ipm-stream.toml",
];

#[test]
fn kubernetes_config_files_load_with_credentials_from_the_environment() {
    for file in FILES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let env: HashMap<String, String> = [
            ("IPM__KAFKA__LIBRDKAFKA__SASL_USERNAME", "ipm-stream"),
            ("IPM__KAFKA__LIBRDKAFKA__SASL_PASSWORD", "secret"),
            ("IPM__KAFKA__LIBRDKAFKA__CLIENT_ID", "ipm-stream-7d9f6-x2x4z"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config = Config::load_with_env(Some(&path), Some(env))
            .unwrap_or_else(|e| panic!("{file} does not load: {e}"));
        let librdkafka = &config.kafka.librdkafka;
        assert_eq!(librdkafka["sasl.username"], "ipm-stream", "{file}");
        assert_eq!(librdkafka["sasl.password"], "secret", "{file}");
        assert_eq!(librdkafka["client.id"], "ipm-stream-7d9f6-x2x4z", "{file}");
        let windows: Vec<String> =
            config.window_specs().unwrap().into_iter().map(|w| w.name).collect();
        // The alert rules and the dashboard select these window labels.
        assert_eq!(windows, ["5m", "1h", "24h"], "{file}");
        assert!(config.http.listen.ends_with(":9898"), "{file}: probes and Service use 9898");
    }
}
