"""The chart's admin HTTP API (admin.*) and its seeding of the registry (relay.integrations, relay.resourcesAts/Hris):
the API off by default, its token a file from an existing Secret only (in the `helm test` pod too), inconsistent
values refused, the Ingress never routing /admin."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import load_config
from tests.deploy.chart import CHART, KUBE_VERSIONS, Helm, run_kubeconform
from tests.deploy.test_chart_config import relay_environment, secret_files_materialised
from tests.deploy.test_chart_webhooks import projected_sources

ADMIN_VALUES = CHART / "ci" / "admin-values.yaml"
SECRETS_DIR = "/var/run/secrets/change-relay"
WITH_EVERYTHING = [CHART / "ci" / "sasl-tls-existing-secrets-values.yaml", ADMIN_VALUES]


# --- the admin API -------------------------------------------------------------------------------------------------


def test_the_admin_api_is_off_by_default(helm: Helm) -> None:
    rendered = helm.template([CHART / "ci" / "minimal-values.yaml"])
    assert "RELAY_ADMIN_TOKEN_FILE" not in relay_environment(rendered)
    assert "admin-token" not in projected_sources(rendered)


def test_the_admin_token_is_a_file_from_the_existing_secret(helm: Helm, tmp_path: Path) -> None:
    rendered = helm.template([ADMIN_VALUES])
    environment = relay_environment(rendered)
    assert environment["RELAY_ADMIN_TOKEN_FILE"] == f"{SECRETS_DIR}/admin-token"
    assert "RELAY_ADMIN_TOKEN" not in environment  # never the token itself
    assert projected_sources(rendered)["admin-token"] == ("relay-admin", "token")
    assert "Secret" not in rendered.kinds()  # the chart stores no token of its own
    config = load_config(environ=secret_files_materialised(environment, tmp_path))
    assert config.admin_token is not None
    assert config.admin_token.reveal() == "stand-in for RELAY_ADMIN_TOKEN_FILE"
    # The Ingress, when there is one, still routes the webhook path only: never /admin.
    with_ingress = helm.template(
        [ADMIN_VALUES, CHART / "ci" / "webhooks-values.yaml"], sets=["admin.existingSecret=relay-admin"]
    )
    paths = [p["path"] for rule in with_ingress.one("Ingress")["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/hooks/kombo"]


def test_the_registry_is_seeded_from_the_values(helm: Helm, tmp_path: Path) -> None:
    environment = relay_environment(helm.template([ADMIN_VALUES]))
    assert environment["RELAY_INTEGRATIONS"] == "personio:8d1hpPsDu6Q5K1UnBDMXiUeGV,bamboohr:4qWk2Zr8TnBv"
    config = load_config(environ=secret_files_materialised(environment, tmp_path))
    assert config.integrations == ("personio:8d1hpPsDu6Q5K1UnBDMXiUeGV", "bamboohr:4qWk2Zr8TnBv")
    assert (config.resources_ats, config.resources_hris) == (("ats/users", "ats/jobs"), ("hris/employees",))


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (["admin.enabled=true"], "admin.enabled needs admin.existingSecret"),
        (["admin.existingSecret=relay-admin"], "admin.existingSecret is set, but admin.enabled is false"),
    ],
)
def test_inconsistent_admin_values_fail_the_render(helm: Helm, assignments: list[str], message: str) -> None:
    result = helm.template_result(sets=assignments)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("admin.enabled=maybe", "/admin/enabled"),
        ("admin.existingSecretKey=", "/admin/existingSecretKey"),
        ("admin.value=t0ken", "'value' not allowed"),  # no inline token
        ("webhooks.path=/admin/hooks", "/webhooks/path"),  # the admin API's paths
        ("webhooks.path=/admin", "/webhooks/path"),
        ("tests.integrationsList.enabled=yes", "/tests/integrationsList/enabled"),
    ],
)
def test_values_schema_rejects_a_bad_admin_value(helm: Helm, assignment: str, message: str) -> None:
    result = helm.template_result(sets=[assignment])
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


# --- with everything -----------------------------------------------------------------------------------------------


def test_the_helm_test_pod_gets_the_admin_token_file_too(helm: Helm) -> None:
    """It mounts the relay's secret files (tests/deploy/test_chart.py checks they are the same): with the admin API
    on, RELAY_ADMIN_TOKEN_FILE of the ConfigMap must hold there too, or `relay integrations list` would refuse the
    configuration."""
    [pod] = [pod for pod in helm.template([ADMIN_VALUES]).all("Pod") if "integrations-list" in pod["metadata"]["name"]]
    [secrets] = [volume for volume in pod["spec"]["volumes"] if volume["name"] == "secrets"]
    files = {item["path"] for source in secrets["projected"]["sources"] for item in source["secret"]["items"]}
    assert "admin-token" in files
    [container] = pod["spec"]["containers"]
    assert container["args"] == ["integrations", "list", "--timeout", "90"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_admin_and_seeds_with_every_secret_pass_kubeconform(helm: Helm, kubeconform: Path, kube_version: str) -> None:
    rendered = helm.template(WITH_EVERYTHING, kube_version=kube_version)
    result = run_kubeconform(kubeconform, rendered.text, kube_version)
    assert result.returncode == 0, result.stdout + result.stderr
