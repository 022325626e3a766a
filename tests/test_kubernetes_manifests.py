"""deploy/kubernetes/ (single process) and deploy/kubernetes/sqs/ (listeners and workers), checked
offline: the core kinds against the Kubernetes API schemas that kubernetes-validate ships (strict:
unknown fields fail); the custom resources (ServiceMonitor, KEDA's ScaledObject and
TriggerAuthentication), which have no schema here, for their core-typed parts and their
consistency with what they point at (see the README); and each pod's args, ports, probes and
environment against the daemon's real options and routes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor, schema_contents
from referencing import Registry, Resource

from snsd.config import SETTINGS, Role, Settings, SNSDOptions
from snsd.ops import ADMIN_PATHS, HEALTH_PATHS, OpsRoutes
from snsd.sqs.queue import LONG_POLL
from snsd.sqs.worker import RECEIVE_GRACE
from tests.test_container_files import env_of, exec_form, last, parse_dockerfile, stages

ROOT = Path(__file__).resolve().parent.parent
DIRECTORIES = {"single": ROOT / "deploy" / "kubernetes", "sqs": ROOT / "deploy" / "kubernetes" / "sqs"}
# The oldest Kubernetes release the manifests are meant for (kubernetes-validate ships its schemas).
KUBERNETES_VERSION = "1.32"
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}
# (directory, kind, name, the role its pods run)
WORKLOADS = [
    ("single", "StatefulSet", "snsd", Role.ALL),
    ("sqs", "Deployment", "snsd-listener", Role.LISTENER),
    ("sqs", "Deployment", "snsd-worker", Role.WORKER),
]


def load(directory: Path) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    documents = []
    for name in kustomization["resources"]:
        documents += [doc for doc in yaml.safe_load_all((directory / name).read_text()) if doc]
    return documents


DOCUMENTS = {name: load(directory) for name, directory in DIRECTORIES.items()}
EVERY = [(where, doc) for where, docs in DOCUMENTS.items() for doc in docs]


def one(documents, kind: str, name: str | None = None) -> dict:
    found = [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def ident(value) -> str:
    where, doc = value
    return f"{where}:{doc['kind']}/{doc['metadata']['name']}"


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def selector_of(document: dict) -> dict:
    selector = document["spec"]["selector"]
    return selector["matchLabels"] if "matchLabels" in selector else selector


def pods_in(documents) -> list[dict]:
    return [d for d in documents if d["kind"] in ("StatefulSet", "Deployment")]


def port_number(endpoint: str) -> int:
    """The port of a Twisted server endpoint string such as tcp:9090:interface=127.0.0.1."""
    return int(endpoint.split(":")[1])


def served_paths(admin: bool) -> set[str]:
    """GET routes the main port (``admin=False``) or the admin listener serves."""
    routes = {rule.rule for rule in OpsRoutes.app.url_map.iter_rules() if "GET" in (rule.methods or ())}
    paths = {p.decode() for p in (HEALTH_PATHS | ADMIN_PATHS if admin else HEALTH_PATHS)}
    return routes & paths


def container_port(container, name_or_number) -> int:
    for port in container["ports"]:
        if name_or_number in (port["name"], port["containerPort"]):
            return port["containerPort"]
    raise AssertionError(f"no container port {name_or_number!r}")


RUNTIME = stages(parse_dockerfile((ROOT / "Dockerfile").read_text()))[-1]


@dataclass
class Workload:
    documents: list[dict]
    object: dict
    role: Role

    @property
    def pod(self) -> dict:
        return self.object["spec"]["template"]

    @property
    def container(self) -> dict:
        (snsd,) = [c for c in self.pod["spec"]["containers"] if c["name"] == "snsd"]
        return snsd

    @property
    def environment(self) -> dict[str, str]:
        assert all("value" in item for item in self.container["env"]), "env from elsewhere: the test cannot see it"
        return {item["name"]: item["value"] for item in self.container["env"]}

    def settings(self) -> Settings:
        """The daemon's own parse of the pod's args and environment, over the image's ENV defaults."""
        options = SNSDOptions(environ={**env_of(RUNTIME), **self.environment})
        options.parseOptions(self.container.get("args", exec_form(last(RUNTIME, "CMD"))))
        return options.settings


@pytest.fixture(params=WORKLOADS, ids=lambda w: f"{w[0]}:{w[2]}")
def workload(request, monkeypatch) -> Workload:
    where, kind, name, role = request.param
    # The spool folder is the pod's volume, absent here.
    monkeypatch.setattr("snsd.config._check_writable_file", lambda flag, path: None)
    return Workload(DOCUMENTS[where], one(DOCUMENTS[where], kind, name), role)


# ---------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("directory", DIRECTORIES.values(), ids=DIRECTORIES.keys())
def test_every_manifest_file_is_a_kustomization_resource(directory):
    listed = set(yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("item", [e for e in EVERY if (e[1]["apiVersion"], e[1]["kind"]) not in CUSTOM], ids=ident)
def test_core_kinds_validate_strictly_against_the_kubernetes_schema(item):
    kubernetes_validate.validate(item[1], KUBERNETES_VERSION, strict=True)


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


@pytest.mark.parametrize("item", [e for e in EVERY if (e[1]["apiVersion"], e[1]["kind"]) in CUSTOM], ids=ident)
def test_custom_resources_have_no_schema_here_so_their_core_typed_parts_are_validated(item):
    document = item[1]
    # If a release of kubernetes-validate ships the CRD's schema, this fails: validate it whole then.
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
    validate_as(document["metadata"], "objectmeta-meta-v1")
    if document["kind"] == "ServiceMonitor":
        validate_as(document["spec"]["selector"], "labelselector-meta-v1")


def test_the_validators_refuse_unknown_fields_and_wrong_types():
    statefulset = one(DOCUMENTS["single"], "StatefulSet")
    misspelt = copy.deepcopy(statefulset)
    probe = misspelt["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = probe
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong = copy.deepcopy(statefulset)
    wrong["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45s"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)
    with pytest.raises(jsonschema.ValidationError):
        validate_as({"matchLabel": {"app": "x"}}, "labelselector-meta-v1")


# ---------------------------------------------------------------------------- each pod and the daemon


def test_args_and_environment_are_accepted_by_the_daemons_options(workload):
    settings = workload.settings()
    assert workload.container.get("command") is None, "the image's entrypoint (twistd -n snsd) must stay"
    assert settings.role is workload.role
    assert settings.dry_run is False
    if workload.role is not Role.LISTENER:
        assert settings.results_bucket
    if workload.role is not Role.WORKER:
        assert settings.topic_arn, "production listeners should accept only their topic"


def test_every_snsd_variable_is_one_of_the_daemons_options(workload):
    known = {s.env for s in SETTINGS if s.env}
    ours = {name for name in workload.environment if name.startswith(("SNSD_", "SNS_", "CIRCUIT_BREAKER_"))}
    assert ours <= known, f"not snsd options: {sorted(ours - known)}"


def test_the_ports_the_daemon_serves_are_the_container_ports_the_services_use(workload):
    settings, container = workload.settings(), workload.container
    served = {port_number(settings.port), port_number(settings.admin_port)}
    assert container_port(container, "http") == port_number(settings.port)
    assert container_port(container, "admin") == port_number(settings.admin_port)
    assert {p["containerPort"] for p in container["ports"]} == served
    labels = workload.pod["metadata"]["labels"]
    for service in (d for d in workload.documents if d["kind"] == "Service"):
        if matches(selector_of(service), labels):
            for service_port in service["spec"]["ports"]:
                assert container_port(container, service_port["targetPort"]) in served


def test_probes_ask_the_daemons_health_routes_on_the_served_port(workload):
    settings, container = workload.settings(), workload.container
    liveness, readiness = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz" and readiness["path"] == "/readyz"
    assert {"/healthz", "/readyz"} <= served_paths(admin=False)
    port = port_number(settings.port)
    assert container_port(container, liveness["port"]) == port == container_port(container, readiness["port"])


def test_grace_period_outlasts_the_drain(workload):
    settings = workload.settings()
    needed = settings.drain_timeout
    if workload.role is Role.WORKER:
        needed += LONG_POLL + RECEIVE_GRACE  # the drain also waits for the long poll in flight
    assert workload.pod["spec"]["terminationGracePeriodSeconds"] > needed


def test_runs_as_the_images_user_on_a_read_only_root_with_writable_volumes(workload):
    settings, container = workload.settings(), workload.container
    uid, _, gid = last(RUNTIME, "USER").partition(":")
    security = workload.pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (int(uid), int(gid), int(gid))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts
    if workload.role is not Role.WORKER:  # a worker keeps no spool
        assert str(Path(settings.spool).parent) in mounts, "the spool must be on a volume"


def test_resources_are_requested_and_job_processes_are_set_where_jobs_run(workload):
    assert {"cpu", "memory"} <= set(workload.container["resources"]["requests"])
    if workload.role is not Role.LISTENER:
        # Left to its default, snsd starts one job process per core of the node, not of the request.
        assert "SNSD_JOB_PROCESSES" in workload.environment and workload.settings().job_processes >= 1


# ---------------------------------------------------------------------------- the objects around the pods


def test_the_single_process_spool_is_on_a_claim_and_the_governing_service_is_headless():
    documents = DOCUMENTS["single"]
    statefulset = one(documents, "StatefulSet")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/var/lib/snsd"] in claims
    assert one(documents, "Service", statefulset["spec"]["serviceName"])["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("item", [e for e in EVERY if e[1]["kind"] in ("Service", "PodDisruptionBudget")], ids=ident)
def test_services_and_budgets_select_pods_of_their_own_mode_only(item):
    where, document = item
    selector = selector_of(document)
    own = [w for w in pods_in(DOCUMENTS[where]) if matches(selector, w["spec"]["template"]["metadata"]["labels"])]
    other = [
        w
        for name, docs in DOCUMENTS.items()
        if name != where
        for w in pods_in(docs)
        if matches(selector, w["spec"]["template"]["metadata"]["labels"])
    ]
    assert own and not other, f"selects {[w['metadata']['name'] for w in own + other]}"


@pytest.mark.parametrize("item", [e for e in EVERY if e[1]["kind"] == "PodDisruptionBudget"], ids=ident)
def test_budgets_let_a_drain_proceed(item):
    # A budget that lets no pod go would block every node drain.
    assert item[1]["spec"].get("maxUnavailable", 0) >= 1


@pytest.mark.parametrize("item", [e for e in EVERY if e[1]["kind"] == "Service"], ids=ident)
def test_services_that_are_not_headless_do_not_publish_the_admin_port(item):
    service = item[1]
    if service["spec"].get("clusterIP") == "None":
        return  # for the ServiceMonitor (and stable pod names), not for clients
    assert all(p["targetPort"] != "admin" and p["port"] != 9090 for p in service["spec"]["ports"])


@pytest.mark.parametrize("where", DOCUMENTS)
def test_servicemonitor_scrapes_the_admin_listener_of_every_pod_through_one_service(where, monkeypatch):
    monkeypatch.setattr("snsd.config._check_writable_file", lambda flag, path: None)
    documents = DOCUMENTS[where]
    monitor = one(documents, "ServiceMonitor")
    selected = [
        d
        for d in documents
        if d["kind"] == "Service" and matches(monitor["spec"]["selector"]["matchLabels"], d["metadata"]["labels"])
    ]
    assert len(selected) == 1, "two Services would scrape every pod twice"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and "/metrics" in served_paths(admin=True)
    (service_port,) = [p for p in selected[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    scraped = [
        w for w in pods_in(documents) if matches(selector_of(selected[0]), w["spec"]["template"]["metadata"]["labels"])
    ]
    assert {w["metadata"]["name"] for w in scraped} == {w["metadata"]["name"] for w in pods_in(documents)}
    for obj in scraped:
        workload = Workload(documents, obj, Role.ALL)
        settings = workload.settings()
        assert not settings.admin_on_main_port
        assert container_port(workload.container, service_port["targetPort"]) == port_number(settings.admin_port)
        # On the pod's address: snsd's loopback default is out of Prometheus' reach.
        assert "interface=" not in settings.admin_port or "interface=0.0.0.0" in settings.admin_port


def test_listeners_workers_and_keda_name_the_same_queue_and_region(monkeypatch):
    monkeypatch.setattr("snsd.config._check_writable_file", lambda flag, path: None)
    documents = DOCUMENTS["sqs"]
    listener = Workload(documents, one(documents, "Deployment", "snsd-listener"), Role.LISTENER)
    worker = Workload(documents, one(documents, "Deployment", "snsd-worker"), Role.WORKER)
    scaled = one(documents, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    queue = worker.settings().queue
    assert listener.settings().queue == queue == trigger["metadata"]["queueURL"]
    regions = {listener.environment["AWS_DEFAULT_REGION"], worker.environment["AWS_DEFAULT_REGION"]}
    assert regions == {trigger["metadata"]["awsRegion"]}
    assert one(documents, "TriggerAuthentication")["metadata"]["name"] == trigger["authenticationRef"]["name"]


def test_keda_scales_the_worker_deployment_which_leaves_its_replicas_to_keda():
    documents = DOCUMENTS["sqs"]
    scaled = one(documents, "ScaledObject")
    target = one(
        documents, scaled["spec"]["scaleTargetRef"].get("kind", "Deployment"), scaled["spec"]["scaleTargetRef"]["name"]
    )
    assert target["metadata"]["name"] == "snsd-worker"
    # A replicas field would be reset by every `kubectl apply`, fighting the autoscaler.
    assert "replicas" not in target["spec"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert int(scaled["spec"]["triggers"][0]["metadata"]["queueLength"]) >= 1


def test_pods_use_their_directorys_service_account():
    for documents in DOCUMENTS.values():
        accounts = {d["metadata"]["name"] for d in documents if d["kind"] == "ServiceAccount"}
        for obj in pods_in(documents):
            assert obj["spec"]["template"]["spec"]["serviceAccountName"] in accounts
