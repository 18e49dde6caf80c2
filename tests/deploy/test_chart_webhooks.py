"""The chart's Kombo webhooks (webhooks.*): off by default, the secret a file like the API key, settings the relay
accepts, and an Ingress that exposes the webhook path and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.config import SETTINGS, load_config
from tests.deploy.chart import CHART, KUBE_VERSIONS, Helm, Rendered, run_kubeconform
from tests.deploy.test_chart_config import relay_environment, secret_files_materialised

WEBHOOKS_VALUES = CHART / "ci" / "webhooks-values.yaml"
SECRETS_DIR = "/var/run/secrets/change-relay"
WEBHOOK_SETTINGS = {
    "RELAY_KOMBO_WEBHOOK_SECRET_FILE",
    "RELAY_KOMBO_WEBHOOK_PATH",
    "RELAY_KOMBO_WEBHOOK_MAX_BODY_BYTES",
    "RELAY_KOMBO_WEBHOOK_MODEL_MAP",
    "RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS",
    "RELAY_FOLLOW_INTEGRATION_STATE",
    "RELAY_FOLLOW_INTEGRATIONS",
}
BY_NAME = {name: setting for setting in SETTINGS for name in setting.env_names}
INLINE = ["webhooks.enabled=true", "webhooks.secret.value=not-a-real-webhook-secret"]
RELAY_OWN_PATHS = ("/metrics", "/livez", "/readyz", "/status")


def projected_sources(rendered: Rendered) -> dict[str, tuple[str, str]]:
    """file under the secrets folder -> (Secret name, key)."""
    volumes = rendered.one("Deployment")["spec"]["template"]["spec"]["volumes"]
    files = {}
    for volume in volumes:
        if volume["name"] == "secrets":
            for source in volume["projected"]["sources"]:
                for item in source["secret"]["items"]:
                    files[item["path"]] = (source["secret"]["name"], item["key"])
    return files


def ingress_paths(ingress: dict[str, Any]) -> list[dict[str, Any]]:
    return [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]


# --- off by default ----------------------------------------------------------------------------------------------


def test_webhooks_are_off_by_default(helm: Helm) -> None:
    rendered = helm.template([CHART / "ci" / "minimal-values.yaml"])
    assert WEBHOOK_SETTINGS.isdisjoint(relay_environment(rendered))
    assert "kombo-webhook-secret" not in projected_sources(rendered)
    assert "Ingress" not in rendered.kinds()


# --- the secret, as a file ---------------------------------------------------------------------------------------


def test_existing_secret_is_mounted_as_a_file_and_named_in_the_configmap(helm: Helm) -> None:
    rendered = helm.template([WEBHOOKS_VALUES])
    assert "Secret" not in rendered.kinds()
    assert projected_sources(rendered)["kombo-webhook-secret"] == ("kombo-webhook", "signing-secret")
    data = rendered.one("ConfigMap")["data"]
    assert data["RELAY_KOMBO_WEBHOOK_SECRET_FILE"] == f"{SECRETS_DIR}/kombo-webhook-secret"
    assert "RELAY_KOMBO_WEBHOOK_SECRET" not in data


def test_inline_secret_goes_to_the_charts_secret_never_to_the_configmap(helm: Helm) -> None:
    rendered = helm.template([CHART / "ci" / "minimal-values.yaml"], sets=INLINE)
    secret = rendered.one("Secret")
    assert set(secret["data"]) == {"kombo-webhook-secret"}
    assert projected_sources(rendered)["kombo-webhook-secret"] == (secret["metadata"]["name"], "kombo-webhook-secret")
    assert projected_sources(rendered)["api-key"] == ("kombo-api-key", "api-key")
    for kind in ("ConfigMap", "Deployment"):
        assert "not-a-real-webhook-secret" not in str(rendered.one(kind))
    annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations


def test_the_existing_secret_wins_over_the_value(helm: Helm) -> None:
    rendered = helm.template(sets=[*INLINE, "webhooks.secret.existingSecret=theirs"])
    assert "Secret" not in rendered.kinds()
    assert projected_sources(rendered)["kombo-webhook-secret"] == ("theirs", "kombo-webhook-secret")


# --- the settings, as the relay reads them -----------------------------------------------------------------------


def test_the_relay_accepts_what_webhooks_values_renders(helm: Helm, tmp_path: Path) -> None:
    environment = relay_environment(helm.template([WEBHOOKS_VALUES]))
    assert set(environment) >= WEBHOOK_SETTINGS
    assert environment["RELAY_KOMBO_WEBHOOK_MAX_BODY_BYTES"] == "2097152"  # not 2.097152e+06
    assert environment["RELAY_KOMBO_WEBHOOK_MODEL_MAP"] == "ats_application_stages=ats/applications;ats_tags="
    config = load_config(environ=secret_files_materialised(environment, tmp_path))
    assert config.kombo_webhook_secret is not None
    assert config.kombo_webhook_secret.reveal() == "stand-in for RELAY_KOMBO_WEBHOOK_SECRET_FILE"
    assert config.kombo_webhook_path == "/hooks/kombo"
    assert config.kombo_webhook_max_body_bytes == 2097152
    assert config.kombo_webhook_model_map == (("ats_application_stages", ("ats/applications",)), ("ats_tags", ()))
    assert config.kombo_webhook_dedup_seconds == 7200
    assert config.follow_integration_state is True
    assert config.follow_integrations is True
    assert config.poll_interval_seconds == 600


def test_webhook_defaults_are_the_relays_defaults(helm: Helm) -> None:
    environment = relay_environment(helm.template(sets=INLINE))
    rendered = WEBHOOK_SETTINGS & set(environment)
    # The secret has no default, and an empty model map is left out (the relay's built-in map applies).
    assert rendered == WEBHOOK_SETTINGS - {"RELAY_KOMBO_WEBHOOK_MODEL_MAP"}
    for name in rendered - {"RELAY_KOMBO_WEBHOOK_SECRET_FILE"}:
        setting = BY_NAME[name]
        assert setting.kind.parse(environment[name]) == setting.default, name


# --- the Ingress -------------------------------------------------------------------------------------------------


def test_ingress_routes_the_webhook_path_only_to_the_service(helm: Helm) -> None:
    rendered = helm.template([WEBHOOKS_VALUES])
    ingress = rendered.one("Ingress")
    service = rendered.one("Service")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "2m"
    assert ingress["spec"]["tls"] == [{"secretName": "relay-webhooks-tls", "hosts": ["relay-webhooks.example.com"]}]
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == ["relay-webhooks.example.com"]
    assert "defaultBackend" not in ingress["spec"]
    [port] = service["spec"]["ports"]
    assert ingress_paths(ingress) == [
        {
            "path": "/hooks/kombo",
            "pathType": "Exact",
            "backend": {"service": {"name": service["metadata"]["name"], "port": {"name": port["name"]}}},
        }
    ]


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["webhooks.ingress.hosts={a.example.com,b.example.com}"],
        ["webhooks.path=/x", "webhooks.ingress.className=", "fullnameOverride=r"],
    ],
    ids=str,
)
def test_ingress_never_exposes_the_relays_own_paths(helm: Helm, sets: list[str]) -> None:
    rendered = helm.template(sets=[*INLINE, "webhooks.ingress.enabled=true", *sets])
    ingress = rendered.one("Ingress")
    webhook_path = relay_environment(rendered)["RELAY_KOMBO_WEBHOOK_PATH"]
    paths = ingress_paths(ingress)
    assert paths
    assert {(path["path"], path["pathType"]) for path in paths} == {(webhook_path, "Exact")}
    assert "defaultBackend" not in ingress["spec"]
    text = str(ingress)
    assert not [own for own in RELAY_OWN_PATHS if own in text]


def test_ingress_without_hosts_has_one_rule_for_every_host(helm: Helm) -> None:
    ingress = helm.template(sets=[*INLINE, "webhooks.ingress.enabled=true"]).one("Ingress")
    [rule] = ingress["spec"]["rules"]
    assert "host" not in rule
    assert "ingressClassName" not in ingress["spec"]
    assert "tls" not in ingress["spec"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_webhooks_values_pass_kubeconform_with_the_ingress(helm: Helm, kubeconform: Path, kube_version: str) -> None:
    rendered = helm.template([WEBHOOKS_VALUES], kube_version=kube_version)
    assert "Ingress" in rendered.kinds()
    result = run_kubeconform(kubeconform, rendered.text, kube_version)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubeconform_rejects_a_misspelt_ingress_field(helm: Helm, kubeconform: Path) -> None:
    """The vendored Ingress schema is strict too."""
    rendered = helm.template([WEBHOOKS_VALUES])
    broken = rendered.text.replace("pathType: Exact", "pathKind: Exact", 1)
    assert broken != rendered.text
    result = run_kubeconform(kubeconform, broken, KUBE_VERSIONS[0])
    assert result.returncode == 1
    assert "pathKind" in result.stdout


# --- values that cannot work -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (["webhooks.enabled=true"], "webhooks.enabled needs webhooks.secret.existingSecret or webhooks.secret.value"),
        (["webhooks.secret.value=s"], "webhooks.secret.* is set, but webhooks.enabled is false"),
        (["webhooks.ingress.enabled=true"], "webhooks.ingress.enabled needs webhooks.enabled"),
    ],
)
def test_inconsistent_webhook_values_fail_the_render(helm: Helm, assignments: list[str], message: str) -> None:
    result = helm.template_result(sets=assignments)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("webhooks.path=/metrics", "/webhooks/path"),
        ("webhooks.path=/status", "/webhooks/path"),
        ("webhooks.path=webhooks", "/webhooks/path"),
        ("webhooks.maxBodyBytes=0", "/webhooks/maxBodyBytes"),
        ("webhooks.dedupSeconds=-1", "/webhooks/dedupSeconds"),
        ("webhooks.followIntegrationState=maybe", "/webhooks/followIntegrationState"),
        ("webhooks.modelMap.ats_users[0]=ats users", "/webhooks/modelMap/ats_users/0"),
        ("webhooks.modelMap.AtsUsers[0]=ats/users", "invalid propertyName 'AtsUsers'"),
        ("webhooks.ingress.hosts[0]=https://relay.example.com", "/webhooks/ingress/hosts/0"),
        ("webhooks.ingress.pathType=Prefix", "'pathType' not allowed"),
        ("webhooks.secret.existingSecretKey=", "/webhooks/secret/existingSecretKey"),
    ],
)
def test_values_schema_rejects_a_bad_webhook_value(helm: Helm, assignment: str, message: str) -> None:
    result = helm.template_result(sets=[assignment])
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr
