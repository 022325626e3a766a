"""deploy/kubernetes/, checked offline: the core kinds against the Kubernetes API schemas that
kubernetes-validate ships (strict: unknown fields fail), the ServiceMonitor for consistency with
the Service it selects (no CRD schema here: see the README), and the pod's command, ports,
probes and environment against the daemon's real options and routes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor, schema_contents
from referencing import Registry, Resource

from snsd.config import SETTINGS, SNSDOptions
from snsd.ops import ADMIN_PATHS, HEALTH_PATHS, OpsRoutes
from tests.test_container_files import env_of, exec_form, last, parse_dockerfile, stages

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes release the manifests are meant for (kubernetes-validate ships its schemas).
KUBERNETES_VERSION = "1.32"
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def load_all() -> list[dict]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    documents = []
    for name in kustomization["resources"]:
        documents += [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]
    return documents


@pytest.fixture(scope="module")
def documents():
    return load_all()


def one(documents, kind: str, name: str | None = None) -> dict:
    found = [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def statefulset(documents):
    return one(documents, "StatefulSet")


@pytest.fixture(scope="module")
def pod(statefulset):
    return statefulset["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod):
    (snsd,) = [c for c in pod["spec"]["containers"] if c["name"] == "snsd"]
    return snsd


@pytest.fixture(scope="module")
def environment(container) -> dict[str, str]:
    assert all("value" in item for item in container["env"]), "env from elsewhere: the test cannot see it"
    return {item["name"]: item["value"] for item in container["env"]}


@pytest.fixture(scope="module")
def runtime():
    return stages(parse_dockerfile((ROOT / "Dockerfile").read_text()))[-1]


@pytest.fixture(scope="module")
def settings(container, environment, runtime, monkeypatch_module):
    """The daemon's own parse of the pod's args and environment, over the image's ENV defaults."""
    # The spool folder is the pod's volume, absent here.
    monkeypatch_module.setattr("snsd.config._check_writable_file", lambda flag, path: None)
    options = SNSDOptions(environ={**env_of(runtime), **environment})
    options.parseOptions(container.get("args", exec_form(last(runtime, "CMD"))))
    return options.settings


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def container_port(container, name_or_number) -> int:
    for port in container["ports"]:
        if name_or_number in (port["name"], port["containerPort"]):
            return port["containerPort"]
    raise AssertionError(f"no container port {name_or_number!r}")


def served_paths(admin: bool) -> set[str]:
    """GET routes the main port (``admin=False``) or the admin listener serves."""
    routes = {rule.rule for rule in OpsRoutes.app.url_map.iter_rules() if "GET" in (rule.methods or ())}
    paths = {p.decode() for p in (HEALTH_PATHS | ADMIN_PATHS if admin else HEALTH_PATHS)}
    return routes & paths


def port_number(endpoint: str) -> int:
    """The port of a Twisted server endpoint string such as tcp:9090:interface=127.0.0.1."""
    return int(endpoint.split(":")[1])


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# ---------------------------------------------------------------------------- schemas


def test_every_manifest_file_is_a_kustomization_resource():
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


CORE = [d for d in load_all() if (d["apiVersion"], d["kind"]) not in CRD_KINDS]


@pytest.mark.parametrize("document", CORE, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_core_kinds_validate_strictly_against_the_kubernetes_schema(document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validate_knows_no_servicemonitor_so_it_is_checked_for_consistency_only(documents):
    # If a release of kubernetes-validate ships the CRD's schema, this fails: validate it then.
    monitor = one(documents, "ServiceMonitor")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, KUBERNETES_VERSION, strict=True)


def validate_as(value, definition: str) -> None:
    """``value`` against one of the API's own type schemas (``objectmeta-meta-v1``...), strictly."""
    # The schema release kubernetes_validate.validate picks for KUBERNETES_VERSION.
    release = [v for v in all_versions() if major_minor(v) == KUBERNETES_VERSION][-1]
    folder = f"kubernetes-json-schema/v{release}-local-strict"
    schema = schema_contents(f"{folder}/{definition}.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(schema_contents(f"{folder}/_definitions.json", KUBERNETES_VERSION)) @ (
        Resource.from_contents(schema) @ Registry()
    )
    jsonschema.Draft202012Validator(schema, registry=registry).validate(value)


def test_the_servicemonitors_metadata_and_selector_are_valid_kubernetes_types(documents):
    # The parts of a ServiceMonitor that are core Kubernetes types; its endpoints are not checked.
    monitor = one(documents, "ServiceMonitor")
    validate_as(monitor["metadata"], "objectmeta-meta-v1")
    validate_as(monitor["spec"]["selector"], "labelselector-meta-v1")
    with pytest.raises(jsonschema.ValidationError):
        validate_as({"matchLabel": {"app": "x"}}, "labelselector-meta-v1")


def test_the_validator_refuses_an_unknown_field_and_a_wrong_type(statefulset):
    misspelt = copy.deepcopy(statefulset)
    probe = misspelt["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = probe
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong = copy.deepcopy(statefulset)
    wrong["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45s"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------------------- the pod and the daemon


def test_args_and_environment_are_accepted_by_the_daemons_options(settings, container):
    assert container.get("command") is None, "the image's entrypoint (twistd -n snsd) must stay"
    assert settings.dry_run is False and settings.results_bucket
    assert settings.topic_arn, "production pods should accept only their topic"


def test_every_snsd_variable_is_one_of_the_daemons_options(environment):
    known = {s.env for s in SETTINGS if s.env}
    ours = {name for name in environment if name.startswith(("SNSD_", "SNS_", "CIRCUIT_BREAKER_"))}
    assert ours <= known, f"not snsd options: {sorted(ours - known)}"


def test_the_ports_the_daemon_serves_are_the_container_ports_the_services_use(settings, container, documents):
    served = {port_number(settings.port), port_number(settings.admin_port)}
    assert container_port(container, "http") == port_number(settings.port)
    assert container_port(container, "admin") == port_number(settings.admin_port)
    assert {p["containerPort"] for p in container["ports"]} == served
    for service in (d for d in documents if d["kind"] == "Service"):
        for service_port in service["spec"]["ports"]:
            assert container_port(container, service_port["targetPort"]) in served


def test_probes_ask_the_daemons_health_routes_on_the_served_port(settings, container):
    port = port_number(settings.port)
    liveness, readiness = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz" and readiness["path"] == "/readyz"
    assert {"/healthz", "/readyz"} <= served_paths(admin=False)
    assert container_port(container, liveness["port"]) == port == container_port(container, readiness["port"])


def test_grace_period_outlasts_the_drain_timeout(pod, settings):
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.drain_timeout


def test_runs_as_the_images_user_on_a_read_only_root_with_a_writable_spool_volume(
    statefulset, pod, container, settings, runtime
):
    uid, _, gid = last(runtime, "USER").partition(":")
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (int(uid), int(gid), int(gid))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    spool_dir = str(Path(settings.spool).parent)
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    assert mounts[spool_dir] in claims, "the spool must live on the pod's PersistentVolumeClaim"
    assert "/tmp" in mounts


def test_resources_are_requested_and_job_processes_are_set(container, environment, settings):
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    # Left to its default, snsd starts one job process per core of the node, not of the request.
    assert "SNSD_JOB_PROCESSES" in environment and settings.job_processes >= 1


# ---------------------------------------------------------------------------- the other objects


def test_services_pdb_and_statefulset_select_the_pods(documents, statefulset, pod):
    labels = pod["metadata"]["labels"]
    assert matches(statefulset["spec"]["selector"]["matchLabels"], labels)
    for service in (d for d in documents if d["kind"] == "Service"):
        assert matches(service["spec"]["selector"], labels), service["metadata"]["name"]
    pdb = one(documents, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
    # A budget that lets no pod go would block every node drain.
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"]["minAvailable"] < statefulset["spec"]["replicas"]
    governing = one(documents, "Service", statefulset["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert pod["spec"]["serviceAccountName"] == one(documents, "ServiceAccount")["metadata"]["name"]


def test_servicemonitor_scrapes_the_daemons_metrics_route_through_one_service(documents, container, settings):
    monitor = one(documents, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [
        d
        for d in documents
        if d["kind"] == "Service" and matches(monitor["spec"]["selector"]["matchLabels"], d["metadata"]["labels"])
    ]
    # One Service only: two would scrape every pod twice.
    assert len(selected) == 1
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    (service_port,) = [p for p in selected[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    scraped = container_port(container, service_port["targetPort"])
    if settings.admin_on_main_port:
        assert scraped == port_number(settings.port) and "/metrics" in served_paths(admin=False)
    else:
        assert scraped == port_number(settings.admin_port) and "/metrics" in served_paths(admin=True)
        # On the pod's address: snsd's loopback default is out of Prometheus' reach.
        assert "interface=" not in settings.admin_port or "interface=0.0.0.0" in settings.admin_port


def test_the_public_service_does_not_publish_the_admin_port(documents, container, settings):
    public = one(documents, "Service", "snsd")
    targets = {container_port(container, p["targetPort"]) for p in public["spec"]["ports"]}
    assert port_number(settings.admin_port) not in targets
