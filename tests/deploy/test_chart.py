"""The Helm chart: `helm lint --strict`, `helm template` piped to `kubeconform -strict`, the values schema, and what
the manifests must say (a fleet of replicas with RollingUpdate, PodDisruptionBudget, topology spread and an optional
HorizontalPodAutoscaler; hardened pod, secrets as files, probes, labels, the test hook)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import CHART, CI_VALUES, KUBE_VERSIONS, NAMESPACE, Helm, Rendered, run_kubeconform

VALUES_SETS = [pytest.param((), id="default"), *(pytest.param((path,), id=path.stem) for path in CI_VALUES)]
SECRETS_DIR = "/var/run/secrets/change-relay"


def relay_container(rendered: Rendered) -> dict[str, Any]:
    containers: list[dict[str, Any]] = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def pod_spec(rendered: Rendered) -> dict[str, Any]:
    spec: dict[str, Any] = rendered.one("Deployment")["spec"]["template"]["spec"]
    return spec


def test_ci_values_files_are_there() -> None:
    assert {path.name for path in CI_VALUES} >= {
        "minimal-values.yaml",
        "monitoring-values.yaml",
        "sasl-tls-existing-secrets-values.yaml",
        "webhooks-values.yaml",
        "admin-values.yaml",
        "fleet-values.yaml",
        "autoscaling-values.yaml",
    }


# --- helm lint, kubeconform --------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_files", VALUES_SETS)
def test_helm_lint_strict(helm: Helm, values_files: tuple[Path, ...]) -> None:
    args = ["lint", "--strict", "--kube-version", KUBE_VERSIONS[0], str(CHART)]
    for path in values_files:
        args += ["--values", str(path)]
    result = helm.run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout, result.stdout
    assert "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_files", VALUES_SETS)
def test_rendered_manifests_pass_kubeconform_strict(
    helm: Helm, kubeconform: Path, values_files: tuple[Path, ...], kube_version: str
) -> None:
    rendered = helm.template(values_files, kube_version=kube_version)
    result = run_kubeconform(kubeconform, rendered.text, kube_version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Valid: {len(rendered.documents)}, Invalid: 0, Errors: 0, Skipped: 0" in result.stdout, result.stdout


@pytest.mark.parametrize(
    "sets",
    [
        ["serviceAccount.create=false"],
        ["nameOverride=y"],  # a YAML 1.1 boolean as the name: labels quote it
        ["kafka.securityProtocol=SSL"],
        ["podDisruptionBudget.enabled=true", "podDisruptionBudget.maxUnavailable=50%"],
        ["livenessProbe.enabled=false", "readinessProbe.enabled=false", "replicaCount=0"],
        ["replicaCount=3"],
        ["replicaCount=6", "updateStrategy.maxSurge=25%", "updateStrategy.maxUnavailable=1"],
        ["replicaCount=2", "updateStrategy.type=Recreate", "topologySpread.enabled=false"],
        ["replicaCount=2", "topologySpread.topologyKey=topology.kubernetes.io/zone"],
        ["autoscaling.enabled=true", "autoscaling.behavior=null"],
        ["apiKey.value=a", "apiKey.existingSecret=b"],
        ["webhooks.enabled=true", "webhooks.secret.value=s", "webhooks.ingress.enabled=true"],
        [
            "webhooks.enabled=true",
            "webhooks.secret.existingSecret=s",
            "webhooks.ingress.enabled=true",
            "webhooks.ingress.hosts={a.example.com,*.example.org}",
            "webhooks.modelMap.ats_tags[0]=ats/candidates",
        ],
    ],
    ids=str,
)
def test_value_variants_pass_kubeconform_strict(helm: Helm, kubeconform: Path, sets: list[str]) -> None:
    rendered = helm.template(sets=sets)
    result = run_kubeconform(kubeconform, rendered.text, KUBE_VERSIONS[0])
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubeconform_rejects_an_unknown_field(helm: Helm, kubeconform: Path) -> None:
    """The vendored schemas are strict: a misspelt field fails, so a clean run above means something."""
    rendered = helm.template([CHART / "ci" / "minimal-values.yaml"])
    broken = rendered.text.replace("readOnlyRootFilesystem: true", "readOnlyRootFS: true", 1)
    assert broken != rendered.text
    result = run_kubeconform(kubeconform, broken, KUBE_VERSIONS[0])
    assert result.returncode == 1
    assert "readOnlyRootFS" in result.stdout


def test_every_kind_the_chart_can_render_has_a_vendored_schema(helm: Helm) -> None:
    kinds = set()
    for path in (None, *CI_VALUES):
        kinds |= helm.template(() if path is None else (path,)).kinds()
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "Pod",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    }


# --- the values schema -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("replicaCount=two", "/replicaCount"),
        ("replicaCount=-1", "/replicaCount"),
        ("updateStrategy.type=BlueGreen", "/updateStrategy/type"),
        ("kafka.stateTopicPartitions=0", "/kafka/stateTopicPartitions"),
        ("kafka.groupSessionTimeoutSeconds=5", "/kafka/groupSessionTimeoutSeconds"),
        ("kafka.controlTopic=a/b", "/kafka/controlTopic"),
        ("topologySpread.whenUnsatisfiable=Never", "/topologySpread/whenUnsatisfiable"),
        ("autoscaling.targetCPUUtilizationPercentage=0", "/autoscaling/targetCPUUtilizationPercentage"),
        ("bogus=1", "'bogus' not allowed"),
        ("relay.pageSize=251", "/relay/pageSize"),
        ("relay.logLevel=LOUD", "/relay/logLevel"),
        ("relay.reconcileMaxVanishFraction=1.5", "/relay/reconcileMaxVanishFraction"),
        ("relay.pollIntervalSecond=5", "'pollIntervalSecond' not allowed"),
        ("kafka.securityProtocol=TLS", "/kafka/securityProtocol"),
        ("kafka.bootstrapServers[0]=kafka", "/kafka/bootstrapServers/0"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("fullnameOverride=on", "/fullnameOverride"),
        ("serviceMonitor.interval=30", "/serviceMonitor/interval"),
        ("commonLabels.app\\.kubernetes\\.io/name=x", "invalid propertyName 'app.kubernetes.io/name'"),
    ],
)
def test_values_schema_rejects_a_bad_value(helm: Helm, assignment: str, message: str) -> None:
    result = helm.template_result(sets=[assignment])
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (["relay.shutdownGraceSeconds=30"], "terminationGracePeriodSeconds (30) must exceed relay.shutdown"),
        (["replicaCount=7"], "replicaCount (7) must not exceed kafka.stateTopicPartitions (6)"),
        (
            ["replicaCount=13", "kafka.stateTopicPartitions=12"],
            "replicaCount (13) must not exceed kafka.stateTopicPartitions (12)",
        ),
        (
            ["autoscaling.enabled=true", "autoscaling.maxReplicas=7"],
            "autoscaling.maxReplicas (7) must not exceed kafka.stateTopicPartitions (6)",
        ),
        (
            ["autoscaling.enabled=true", "autoscaling.minReplicas=4", "autoscaling.maxReplicas=3"],
            "autoscaling.minReplicas (4) must not exceed autoscaling.maxReplicas (3)",
        ),
        (
            ["autoscaling.enabled=true", "resources.requests.cpu=null"],
            "autoscaling.enabled needs resources.requests.cpu",
        ),
        (["kafka.securityProtocol=SASL_SSL"], "kafka.sasl.mechanism is required"),
        (
            ["kafka.securityProtocol=SASL_SSL", "kafka.sasl.mechanism=PLAIN", "kafka.sasl.username=u"],
            "kafka.sasl.password or kafka.sasl.existingSecret is required",
        ),
        (["kafka.sasl.username=u"], "does not use SASL"),
        (["kafka.tls.existingSecret=tls"], "does not use TLS"),
        (
            ["kafka.securityProtocol=SSL", "kafka.tls.existingSecret=tls", "kafka.tls.keyKey=tls.key"],
            "need kafka.tls.certKey",
        ),
        (
            ["kafka.securityProtocol=SSL", "kafka.tls.existingSecret=tls", "kafka.tls.caKey="],
            "none of kafka.tls.caKey",
        ),
    ],
)
def test_inconsistent_values_fail_the_render_with_a_message(helm: Helm, assignments: list[str], message: str) -> None:
    result = helm.template_result(sets=assignments)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# --- what the manifests say --------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_files", VALUES_SETS)
def test_replicas_are_replaced_by_a_rolling_update(helm: Helm, values_files: tuple[Path, ...]) -> None:
    deployment = helm.template(values_files).one("Deployment")
    stem = values_files[0].stem if values_files else "default"
    if stem == "autoscaling-values":
        assert "replicas" not in deployment["spec"]  # the autoscaler owns it
    else:
        assert deployment["spec"]["replicas"] == {"fleet-values": 3}.get(stem, 1)
    # One new replica at a time (each joins the group: a rebalance); an old one stops once its replacement is ready.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_default_is_one_replica(helm: Helm) -> None:
    rendered = helm.template()
    assert rendered.one("Deployment")["spec"]["replicas"] == 1
    assert "PodDisruptionBudget" not in rendered.kinds()
    assert "HorizontalPodAutoscaler" not in rendered.kinds()


def test_three_replicas_render_with_a_pdb_and_a_node_spread(helm: Helm) -> None:
    rendered = helm.template(sets=["replicaCount=3"])
    assert rendered.one("Deployment")["spec"]["replicas"] == 3
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"] == rendered.one("Service")["spec"]["selector"]
    [spread] = pod_spec(rendered)["topologySpreadConstraints"]
    assert spread == {
        "topologyKey": "kubernetes.io/hostname",
        "maxSkew": 1,
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": rendered.one("Service")["spec"]["selector"]},
    }
    assert "HorizontalPodAutoscaler" not in rendered.kinds()


@pytest.mark.parametrize(
    ("sets", "rendered"),
    [
        ([], False),
        (["replicaCount=0"], False),
        (["replicaCount=2"], True),
        (["autoscaling.enabled=true"], True),
        (["replicaCount=3", "podDisruptionBudget.enabled=false"], False),
        (["podDisruptionBudget.enabled=true"], True),
    ],
    ids=str,
)
def test_pdb_is_rendered_when_more_than_one_replica_may_run(helm: Helm, sets: list[str], rendered: bool) -> None:
    assert ("PodDisruptionBudget" in helm.template(sets=sets).kinds()) is rendered


def test_topology_spread_is_configurable_and_extra_constraints_follow(helm: Helm) -> None:
    rendered = helm.template([CHART / "ci" / "fleet-values.yaml"])
    chart_spread, zones = pod_spec(rendered)["topologySpreadConstraints"]
    assert chart_spread["topologyKey"] == "kubernetes.io/hostname"
    assert zones["topologyKey"] == "topology.kubernetes.io/zone"
    rule = helm.template(sets=["topologySpread.whenUnsatisfiable=DoNotSchedule", "topologySpread.maxSkew=2"])
    [spread] = pod_spec(rule)["topologySpreadConstraints"]
    assert (spread["whenUnsatisfiable"], spread["maxSkew"]) == ("DoNotSchedule", 2)
    assert "topologySpreadConstraints" not in pod_spec(helm.template(sets=["topologySpread.enabled=false"]))


def test_fleet_values_set_the_group_settings(helm: Helm) -> None:
    rendered = helm.template([CHART / "ci" / "fleet-values.yaml"])
    data = rendered.one("ConfigMap")["data"]
    assert data["RELAY_GROUP_ID"] == "change-relay-production"
    assert data["RELAY_GROUP_SESSION_TIMEOUT_SECONDS"] == "15"
    assert data["RELAY_CONTROL_TOPIC"] == "kombo.relay-control"
    assert data["RELAY_STATE_TOPIC_PARTITIONS"] == "12"
    assert rendered.one("Deployment")["spec"]["replicas"] == 3
    assert rendered.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    # Empty group id and control topic: not rendered, so the relay derives them (the same on every replica).
    default = helm.template().one("ConfigMap")["data"]
    assert "RELAY_GROUP_ID" not in default
    assert "RELAY_CONTROL_TOPIC" not in default


def test_autoscaling_renders_an_hpa_and_the_deployment_leaves_replicas_to_it(helm: Helm) -> None:
    rendered = helm.template([CHART / "ci" / "autoscaling-values.yaml"])
    deployment = rendered.one("Deployment")
    assert "replicas" not in deployment["spec"]
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 12)
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}
    ]
    # One replica at a time either way: each is a rebalance.
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]
    assert (
        "behavior"
        not in helm.template(sets=["autoscaling.enabled=true", "autoscaling.behavior=null"]).one(
            "HorizontalPodAutoscaler"
        )["spec"]
    )
    assert rendered.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_recreate_is_still_available(helm: Helm) -> None:
    strategy = helm.template(sets=["updateStrategy.type=Recreate"]).one("Deployment")["spec"]["strategy"]
    assert strategy == {"type": "Recreate"}


def test_shutdown_grace_is_below_the_termination_grace(helm: Helm) -> None:
    """A stopping replica hands its partitions over (pages in flight commit) within the grace, before the kill."""
    for values_files in [(), *((path,) for path in CI_VALUES)]:
        rendered = helm.template(values_files)
        grace = float(rendered.one("ConfigMap")["data"]["RELAY_SHUTDOWN_GRACE_SECONDS"])
        assert grace < pod_spec(rendered)["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("values_files", VALUES_SETS)
def test_pod_is_hardened(helm: Helm, values_files: tuple[Path, ...]) -> None:
    rendered = helm.template(values_files)
    pod = pod_spec(rendered)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    test_containers = [container for pod in rendered.all("Pod") for container in pod["spec"]["containers"]]
    assert len(test_containers) == 2  # /readyz, relay integrations list
    for container in (relay_container(rendered), *test_containers):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {mount["mountPath"]: mount["name"] for mount in relay_container(rendered)["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_container_runs_relay_run_with_probes_and_resources(helm: Helm) -> None:
    rendered = helm.template([CHART / "ci" / "minimal-values.yaml"])
    container = relay_container(rendered)
    assert "command" not in container  # the image's entrypoint, `relay`
    assert container["args"] == ["run"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    assert container["envFrom"][0] == {"configMapRef": {"name": "change-relay"}}
    assert pod_spec(rendered)["terminationGracePeriodSeconds"] == 30


def test_config_change_restarts_the_pod(helm: Helm) -> None:
    def checksum(*sets: str) -> str:
        annotations = helm.template(sets=list(sets)).one("Deployment")["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/config"]
        return value

    assert checksum() == checksum()
    assert checksum() != checksum("relay.logLevel=DEBUG")


def projected_sources(rendered: Rendered) -> dict[str, tuple[str, str]]:
    """file under the secrets folder -> (Secret name, key)."""
    [secrets] = [volume for volume in pod_spec(rendered)["volumes"] if volume["name"] == "secrets"]
    files = {}
    for source in secrets["projected"]["sources"]:
        for item in source["secret"]["items"]:
            files[item["path"]] = (source["secret"]["name"], item["key"])
    return files


def test_existing_secrets_are_mounted_as_files_and_no_secret_is_created(helm: Helm) -> None:
    rendered = helm.template([CHART / "ci" / "sasl-tls-existing-secrets-values.yaml"])
    assert "Secret" not in rendered.kinds()
    assert projected_sources(rendered) == {
        "api-key": ("kombo-api-key", "token"),
        "kafka-sasl-password": ("kafka-user-change-relay", "sasl-password"),
        "kafka-tls-ca.crt": ("kafka-client-tls", "ca.crt"),
        "kafka-tls-client.crt": ("kafka-client-tls", "tls.crt"),
        "kafka-tls-client.key": ("kafka-client-tls", "tls.key"),
        "kafka-tls-key-password": ("kafka-client-tls", "key-password"),
    }
    mount = next(m for m in relay_container(rendered)["volumeMounts"] if m["name"] == "secrets")
    assert mount == {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True}
    data = rendered.one("ConfigMap")["data"]
    assert data["RELAY_API_KEY_FILE"] == f"{SECRETS_DIR}/api-key"
    assert data["RELAY_KAFKA_SASL_PASSWORD_FILE"] == f"{SECRETS_DIR}/kafka-sasl-password"
    assert data["RELAY_KAFKA_SSL_KEY_PASSWORD_FILE"] == f"{SECRETS_DIR}/kafka-tls-key-password"
    assert pod_spec(rendered)["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert relay_container(rendered)["image"].startswith("registry.example.com/data/change-relay@sha256:")


@pytest.mark.parametrize("values", ["sasl-tls-existing-secrets-values.yaml", "monitoring-values.yaml"])
def test_secret_files_are_not_readable_by_other_users(helm: Helm, values: str) -> None:
    # A Secret volume's files are 0644 unless defaultMode says otherwise; the relay warns about such a file.
    [secrets] = [v for v in pod_spec(helm.template([CHART / "ci" / values]))["volumes"] if v["name"] == "secrets"]
    assert secrets["projected"]["defaultMode"] & 0o007 == 0
    items = [item for source in secrets["projected"]["sources"] for item in source["secret"]["items"]]
    assert all(item.get("mode", 0) & 0o007 == 0 for item in items)


def test_inline_secrets_go_to_the_charts_secret_never_to_the_configmap(helm: Helm) -> None:
    rendered = helm.template([CHART / "ci" / "monitoring-values.yaml"])
    secret = rendered.one("Secret")
    assert set(secret["data"]) == {"api-key", "kafka-sasl-password"}
    assert projected_sources(rendered) == {
        "api-key": (secret["metadata"]["name"], "api-key"),
        "kafka-sasl-password": (secret["metadata"]["name"], "kafka-sasl-password"),
    }
    assert "not-a-real" not in str(rendered.one("ConfigMap"))
    assert "not-a-real" not in str(rendered.one("Deployment"))
    annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations


@pytest.fixture(scope="module")
def notes_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart whose NOTES.txt is a template `helm template` renders: NOTES.txt itself is only rendered by
    `helm install`, which needs a cluster even with --dry-run."""
    copy = tmp_path_factory.mktemp("notes") / "change-relay"
    shutil.copytree(CHART, copy)
    notes = (copy / "templates" / "NOTES.txt").read_text()
    (copy / "templates" / "NOTES.txt").unlink()
    indented = "".join(f"  {line}" for line in notes.splitlines(keepends=True))
    (copy / "templates" / "zz-notes.yaml").write_text(f"notes: |\n{indented}")
    return copy


def render_notes(helm: Helm, chart: Path, *args: str) -> str:
    result = helm.run(
        "template", "change-relay", str(chart), "--kube-version", KUBE_VERSIONS[0],
        "--show-only", "templates/zz-notes.yaml", *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes: str = yaml.safe_load(result.stdout)["notes"]
    return notes


def test_defaults_render_without_secrets_and_notes_name_what_is_missing(helm: Helm, notes_chart: Path) -> None:
    rendered = helm.template()
    assert "Secret" not in rendered.kinds()
    assert all(volume["name"] != "secrets" for volume in pod_spec(rendered)["volumes"])
    assert "RELAY_API_KEY_FILE" not in rendered.one("ConfigMap")["data"]
    notes = render_notes(helm, notes_chart)
    assert "WARNING: the relay will refuse to start" in notes
    for value in ("apiKey.existingSecret or apiKey.value", "kafka.bootstrapServers"):
        assert value in notes
    assert "relay.integrations" not in notes  # optional: the registry of integrations says what is polled
    complete = render_notes(helm, notes_chart, "--values", str(CHART / "ci" / "monitoring-values.yaml"))
    assert "WARNING" not in complete
    assert "helm test change-relay" in complete
    assert "ServiceMonitor change-relay" in complete
    assert "the relay is paused" in render_notes(helm, notes_chart, "--set", "replicaCount=0")
    assert "webhook" not in complete.lower()


def test_notes_give_the_webhook_url_to_register(helm: Helm, notes_chart: Path) -> None:
    values = str(CHART / "ci" / "webhooks-values.yaml")
    with_ingress = render_notes(helm, notes_chart, "--namespace", NAMESPACE, "--values", values)
    assert "https://relay-webhooks.example.com/hooks/kombo" in with_ingress
    assert f"http://change-relay.{NAMESPACE}.svc:8080/hooks/kombo" in with_ingress
    assert "WARNING" not in with_ingress
    sets = ["webhooks.enabled=true", "webhooks.secret.value=s", "webhooks.ingress.enabled=true"]
    plain = render_notes(helm, notes_chart, "--namespace", NAMESPACE, *(f"--set={s}" for s in sets))
    assert "http://<the Ingress's address>/webhooks/kombo" in plain
    no_ingress = render_notes(helm, notes_chart, "--namespace", NAMESPACE, *(f"--set={s}" for s in sets[:2]))
    assert "expose /webhooks/kombo (and only it, never /metrics or /status)" in no_ingress


@pytest.mark.parametrize("values_files", VALUES_SETS)
def test_every_object_has_the_standard_labels(helm: Helm, values_files: tuple[Path, ...]) -> None:
    for doc in helm.template(values_files).documents:
        labels = doc["metadata"]["labels"]
        for name in ("name", "instance", "version", "managed-by", "component", "part-of"):
            assert f"app.kubernetes.io/{name}" in labels, (doc["kind"], name)
        assert labels["helm.sh/chart"] == "change-relay-0.1.0"
        assert doc["metadata"]["namespace"] == NAMESPACE


def test_service_selects_the_relay_pods_only(helm: Helm) -> None:
    rendered = helm.template()
    selector = rendered.one("Service")["spec"]["selector"]
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    for test_pod in rendered.all("Pod"):
        assert not selector.items() <= test_pod["metadata"]["labels"].items()
    assert rendered.one("Service")["spec"]["publishNotReadyAddresses"] is True
    assert rendered.one("Deployment")["spec"]["selector"]["matchLabels"] == selector


def test_monitoring_objects(helm: Helm) -> None:
    rendered = helm.template([CHART / "ci" / "monitoring-values.yaml"])
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"] == rendered.one("Service")["spec"]["selector"]
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    rules = [rule for group in rendered.one("PrometheusRule")["spec"]["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} == {
        "ChangeRelayDown",
        "ChangeRelayNotReady",
        "ChangeRelayPollsFailing",
        "ChangeRelayWatermarkLagHigh",
        "ChangeRelayIntegrationUnhealthy",
        "ChangeRelayPairStuck",
        "ChangeRelayFenced",
        "ChangeRelayPartitionUnowned",
        "ChangeRelayRebalanceStorm",
    }
    for rule in rules:
        assert rule["labels"]["team"] == "data-platform"
        assert rule["annotations"]["runbook_url"] == f"https://runbooks.example.com/change-relay#{rule['alert']}"
    lag = next(rule for rule in rules if rule["alert"] == "ChangeRelayWatermarkLagHigh")
    assert "> 3600" in lag["expr"]


def test_alerts_can_be_turned_off_one_by_one(helm: Helm) -> None:
    rendered = helm.template(sets=["prometheusRule.enabled=true", "prometheusRule.alerts.fenced.enabled=false"])
    alerts = {rule["alert"] for group in rendered.one("PrometheusRule")["spec"]["groups"] for rule in group["rules"]}
    assert "ChangeRelayFenced" not in alerts
    assert "ChangeRelayDown" in alerts


def test_pdb_min_available_replaces_max_unavailable(helm: Helm) -> None:
    rendered = helm.template(sets=["podDisruptionBudget.enabled=true", "podDisruptionBudget.minAvailable=1"])
    assert rendered.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in rendered.one("PodDisruptionBudget")["spec"]


def test_replica_count_zero_pauses_the_relay(helm: Helm) -> None:
    assert helm.template(sets=["replicaCount=0"]).one("Deployment")["spec"]["replicas"] == 0


# --- the helm test hook ------------------------------------------------------------------------------------------


class _Readyz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b'{"ready": true}' if self.status == 200 else b'{"ready": false}'
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(params=[200, 503], ids=["ready", "not-ready"])
def readyz_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    handler = type("Handler", (_Readyz,), {"status": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/readyz", request.param
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_helm_test_pod_checks_readyz(helm: Helm, readyz_server: tuple[str, int]) -> None:
    """The hook's script, run here against a stand-in /readyz: 0 when ready, non-zero once its time is up."""
    [pod] = [pod for pod in helm.template().all("Pod") if pod["metadata"]["name"].endswith("-test-readyz")]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["python", "-c"]
    script, url, timeout = container["args"]
    assert url == f"http://change-relay.{NAMESPACE}.svc:8080/readyz"
    assert timeout == "60"
    local_url, status = readyz_server
    result = subprocess.run(
        [sys.executable, "-c", script, local_url, "0"], capture_output=True, text=True, check=False, timeout=30
    )
    if status == 200:
        assert result.returncode == 0, result.stderr
        assert '"ready": true' in result.stdout
    else:
        assert result.returncode == 1
        assert "is not ready: HTTP Error 503" in result.stderr


def integrations_list_pod(rendered: Rendered) -> dict[str, Any]:
    [pod] = [pod for pod in rendered.all("Pod") if pod["metadata"]["name"].endswith("-test-integrations-list")]
    return pod


@pytest.mark.parametrize(
    "values_files",
    [(), (CHART / "ci" / "sasl-tls-existing-secrets-values.yaml",)],
    ids=["default", "sasl-tls-existing-secrets"],
)
def test_helm_test_pod_lists_the_integrations_configured_like_the_relay(
    helm: Helm, values_files: tuple[Path, ...]
) -> None:
    """`relay integrations list` with the relay's own ConfigMap, extra environment and secret files: every *_FILE
    setting of the ConfigMap holds in the test pod as in the relay's."""
    rendered = helm.template(values_files)
    pod = integrations_list_pod(rendered)
    relay_pod = pod_spec(rendered)
    relay = relay_container(rendered)
    [container] = pod["spec"]["containers"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "command" not in container  # the image's entrypoint, `relay`
    assert container["args"] == ["integrations", "list", "--timeout", "60"]
    assert container["image"] == relay["image"]
    assert container["envFrom"] == relay["envFrom"]
    assert container.get("env") == relay.get("env")
    assert container["securityContext"] == relay["securityContext"]
    assert pod["spec"]["securityContext"] == relay_pod["securityContext"]
    assert {m["name"]: m for m in container["volumeMounts"]} == {m["name"]: m for m in relay["volumeMounts"]}
    assert {v["name"]: v for v in pod["spec"]["volumes"]} == {v["name"]: v for v in relay_pod["volumes"]}
    if values_files:
        sources = {v["name"]: v for v in pod["spec"]["volumes"]}["secrets"]["projected"]["sources"]
        files = {item["path"] for source in sources for item in source["secret"]["items"]}
        assert {"api-key", "kafka-sasl-password", "kafka-tls-ca.crt", "kafka-tls-client.key"} <= files
        assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
        assert {"name": "RELAY_TOPIC_TEMPLATE", "value": "{prefix}.{resource}.{event}"} in container["env"]


def test_helm_test_pod_of_relay_integrations_list_can_be_left_out(helm: Helm) -> None:
    rendered = helm.template(sets=["tests.integrationsList.enabled=false"])
    assert [pod["metadata"]["name"] for pod in rendered.all("Pod")] == ["change-relay-test-readyz"]
