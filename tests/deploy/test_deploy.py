"""Offline checks of deploy/: rendered Kustomize manifests against the Kubernetes schemas and
focused CRD schemas, the alert rules with promtool, and the consistency between the manifests,
the service configuration they mount, the rules and the Grafana dashboard.

Run by tests/run-all.sh; needs kustomize (or kubectl with its built-in kustomize), promtool,
kubernetes-validate and PyYAML. IPM_KUSTOMIZE names the render command ("kubectl kustomize").
"""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib

import jsonschema
import kubernetes_validate
import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import crd_schemas  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.37.0"
OVERLAYS = ["base", "overlays/production"]
RULES = DEPLOY / "prometheus/ipm-stream.rules.yml"
DASHBOARD = DEPLOY / "grafana/ipm-stream.json"


def render(overlay):
    command = shlex.split(os.environ.get("IPM_KUSTOMIZE", "kubectl kustomize"))
    result = subprocess.run(command + [str(DEPLOY / "kubernetes" / overlay)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{command} {overlay} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request):
    return request.param, render(request.param)


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def mounted_config(docs):
    """The service TOML the Deployment mounts, parsed."""
    deployment = one(docs, "Deployment")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"]
                  if "configMap" in v)
    config_map = next(d for d in docs if d["kind"] == "ConfigMap"
                      and d["metadata"]["name"] == volume["configMap"]["name"])
    return tomllib.loads(config_map["data"]["ipm-stream.toml"])


def container(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_builtin_kinds_pass_strict_kubernetes_schema_validation(manifests):
    _, docs = manifests
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in crd_schemas.SCHEMAS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 5


def test_custom_resources_match_the_focused_crd_schemas(manifests):
    _, docs = manifests
    kinds = set()
    for doc in docs:
        schema = crd_schemas.SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema is None:
            continue
        jsonschema.validate(doc, schema)
        kinds.add(doc["kind"])
    assert kinds == {"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"}


def test_every_kind_is_validated_by_one_of_the_two_checks(manifests):
    _, docs = manifests
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in crd_schemas.SCHEMAS:
            continue
        # Raises SchemaNotFoundError for a custom kind nobody checks.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_focused_crd_schemas_reject_a_misspelt_field():
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
              "metadata": {"name": "x"},
              "spec": {"scaleTargetRef": {"name": "x"}, "maxReplicas": 3,
                       "triggers": [{"type": "kafka", "metadata": {}}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, crd_schemas.SCALED_OBJECT)
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
               "metadata": {"name": "x"},
               "spec": {"selector": {}, "endpoints": [{"port": "http", "interval": "30 s"}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, crd_schemas.SERVICE_MONITOR)


def test_pod_runs_restricted_non_root_read_only_without_capabilities(manifests):
    _, docs = manifests
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        security = c["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert "add" not in security["capabilities"]
        assert security.get("privileged", False) is False


def test_probes_use_health_endpoints_on_the_configured_http_port(manifests):
    _, docs = manifests
    c = container(docs)
    port = int(mounted_config(docs)["http"]["listen"].rsplit(":", 1)[1])
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert named[c[probe]["httpGet"]["port"]] == port


def test_termination_grace_exceeds_the_service_shutdown_grace(manifests):
    _, docs = manifests
    grace = mounted_config(docs)["shutdown"]["grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match, f"grace_period {grace!r} is not whole seconds"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= int(match.group(1)) + 10


def test_config_comes_from_the_configmap_and_credentials_from_the_secret(manifests):
    _, docs = manifests
    c = container(docs)
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert f"--config={mount['mountPath']}/ipm-stream.toml" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    for variable, key in (("IPM__KAFKA__LIBRDKAFKA__SASL_USERNAME", "username"),
                          ("IPM__KAFKA__LIBRDKAFKA__SASL_PASSWORD", "password")):
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "ipm-stream-kafka",
                                                              "key": key}
    config = mounted_config(docs)
    assert "sasl.password" not in config["kafka"].get("librdkafka", {})
    ca = config["kafka"]["librdkafka"]["ssl.ca.location"]
    tls = next(m for m in c["volumeMounts"] if m["name"] == "kafka-tls")
    assert ca.startswith(tls["mountPath"] + "/")


def test_resources_have_requests_and_a_memory_limit(manifests):
    _, docs = manifests
    resources = container(docs)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_service_monitor_and_service_select_the_pods_and_their_http_port(manifests):
    _, docs = manifests
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    # The alert rules select job="ipm-stream": the jobLabel must yield that.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "ipm-stream"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_scaled_object_follows_the_consumer_group_within_the_partition_count(manifests):
    _, docs = manifests
    scaled = one(docs, "ScaledObject")
    spec = scaled["spec"]
    config = mounted_config(docs)
    partitions = int(scaled["metadata"]["annotations"]["ipm-stream/input-partitions"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    assert spec["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    topics = set()
    auth = one(docs, "TriggerAuthentication")
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert set(meta) <= crd_schemas.KAFKA_SCALER_KEYS, set(meta) - crd_schemas.KAFKA_SCALER_KEYS
        for key, allowed in crd_schemas.KAFKA_SCALER_VALUES.items():
            assert key not in meta or meta[key] in allowed, (key, meta[key])
        assert int(meta["lagThreshold"]) > 0
        assert meta["allowIdleConsumers"] == "false"
        assert meta["bootstrapServers"] == config["kafka"]["brokers"]
        assert meta["consumerGroup"] == config["kafka"]["group_id"]
        assert meta["offsetResetPolicy"] == config["kafka"]["auto_offset_reset"]
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        topics.add(meta["topic"])
    assert topics == {config["input"]["impressions_topic"], config["input"]["installs_topic"]}
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in crd_schemas.KAFKA_AUTH_PARAMETERS


def test_prometheus_rule_holds_exactly_the_plain_rules_file(manifests, tmp_path):
    _, docs = manifests
    rule = one(docs, "PrometheusRule")
    plain = yaml.safe_load(RULES.read_text())
    assert rule["spec"]["groups"] == plain["groups"]
    extracted = tmp_path / "extracted.rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(["promtool", "check", "rules", str(extracted)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_files_are_up_to_date():
    for script in ("deploy/prometheus/generate_prometheusrule.py",
                   "deploy/prometheus/tests/generate_tests.py"):
        result = subprocess.run([sys.executable, str(ROOT / script), "--check"],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_rules_and_passes_their_unit_tests():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", "ipm-stream.test.yml"],
                          cwd=DEPLOY / "prometheus/tests",
                          capture_output=True, text=True, check=False)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def alerts():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def readme_anchors():
    """GitHub's anchors for the README's headings."""
    anchors = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_alert_has_a_summary_a_templated_description_and_a_runbook_section():
    anchors = readme_anchors()
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))
    assert {"IpmStreamCreativeIpmDrop", "IpmStreamCampaignIpmDrop", "IpmStreamInstallsStopped",
            "IpmStreamNoFreshOutput", "IpmStreamConsumerLagGrowing",
            "IpmStreamRejectionRateHigh", "IpmStreamProcessorDown"} == set(names)
    for alert in alerts():
        annotations = alert["annotations"]
        assert annotations["summary"].strip()
        assert "{{" in annotations["description"], alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "README.md"
        assert anchor == alert["alert"].lower(), alert["alert"]
        assert anchor in anchors, f"README.md has no section for {alert['alert']}"


def dashboard():
    return json.loads(DASHBOARD.read_text())


def panels(board):
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_dashboard_uses_a_datasource_variable_and_campaign_and_creative_variables():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("campaign", "creative"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    assert "$campaign" in variables["creative"]["definition"]
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert board["uid"] and board["title"]
    assert "__inputs" not in board, "an exported-for-sharing dashboard pins a datasource"


def test_dashboard_has_the_panels_the_runbook_refers_to():
    titles = {p["title"] for p in panels(dashboard())}
    for wanted in ("IPM with 95% interval", "Impressions and installs", "Top movers",
                   "Refused, dead-lettered and duplicate messages", "Consumer lag",
                   "Watermark delay", "State rebuild time"):
        assert any(t.startswith(wanted) for t in titles), wanted


def test_dockerfile_builds_locked_and_runs_non_root_with_only_binary_and_config():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "builder"
    assert "cargo build --release --locked" in text
    installs = " ".join(re.findall(r"apt-get install[^\n]*", text))
    assert "build-essential" in installs and "cmake" not in installs
    runtime = text.split("AS runtime", 1)[1]
    copies = re.findall(r"^COPY\s+(.*)$", runtime, re.M)
    assert copies == ["--from=builder /out/ipm-stream /usr/local/bin/ipm-stream",
                      "config/ /etc/ipm-stream/"]
    user = re.search(r"^USER\s+(\d+):(\d+)$", runtime, re.M)
    assert user and int(user.group(1)) != 0
    assert re.search(r"^HEALTHCHECK\s", runtime, re.M)
    # The pod's runAsUser is the image's user, so files owned by it line up.
    docs = render("base")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(user.group(1))


def docker_context_allows(path):
    """Whether .dockerignore (an allowlist: `*` then `!entry` lines) lets `path` through."""
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    return any(path == entry or path.startswith(entry + "/") for entry in allowed)


def test_docker_context_holds_every_file_cargo_needs_to_build():
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    needed = ["Cargo.toml", "Cargo.lock", "src/main.rs", "src/lib.rs", "config/ipm-stream.toml"]
    folders = {"bin": "src/bin", "bench": "benches", "test": "tests", "example": "examples"}
    for kind, folder in folders.items():
        for target in manifest.get(kind, []):
            needed.append(target.get("path", f"{folder}/{target['name']}.rs"))
    if "build" in manifest.get("package", {}):
        needed.append(manifest["package"]["build"])
    elif (ROOT / "build.rs").exists():
        needed.append("build.rs")
    for path in needed:
        assert docker_context_allows(path), f".dockerignore leaves out {path}, which Cargo needs"
    assert not docker_context_allows("target/release/ipm-stream")
