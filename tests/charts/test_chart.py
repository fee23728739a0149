"""The Helm chart (charts/tokenyard), specified through real tools only.

Helm's own library (helm_python) lints and renders the chart and checks values against values.schema.json;
kubernetes-validate checks every rendered object against Kubernetes' published schemas (1.29, the chart's
oldest, and 1.33); custom resources are checked against their CRD's openAPIV3Schema with jsonschema. The
operator's and the gateway's own argument parsers and the gateway's config model read what the chart renders.

Rendering is offline (no cluster): `lookup` finds nothing, as on a first install.
"""

from __future__ import annotations

import argparse
import base64
import functools
import importlib
import itertools
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tokenyard"
EVERYTHING = yaml.safe_load(Path(__file__).with_name("values-everything.yaml").read_text())
VALUE_SETS = {"default": {}, "everything": EVERYTHING}
RELEASE, NAMESPACE = "ty", "serving"
FULLNAME = "ty-tokenyard"
KUBERNETES_VERSIONS = ["1.29.0", "1.33.0"]
# Custom kinds whose CRD the chart does not ship (the Prometheus Operator's): test_service_monitor checks it.
FOREIGN_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "CustomResourceDefinition"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
LLMD_CRD = "llmdeployments.tokenyard.dev"

CRUD = ("get", "list", "watch", "create", "update", "patch", "delete")
# What the operator may do in a namespace it handles: exactly this, nothing more.
OPERATOR_NAMESPACED = {
    *(("tokenyard.dev", "llmdeployments", v) for v in ("get", "list", "watch", "patch", "update")),
    *(("tokenyard.dev", "llmdeployments/status", v) for v in ("get", "patch", "update")),
    ("tokenyard.dev", "llmdeployments/finalizers", "update"),
    *(("apps", "deployments", v) for v in CRUD),
    *(("", "services", v) for v in CRUD),
    *(("", "pods", v) for v in ("get", "list", "watch")),
    *((group, "events", v) for group in ("", "events.k8s.io") for v in ("create", "patch")),
    *(("policy", "poddisruptionbudgets", v) for v in CRUD),
    *(("autoscaling", "horizontalpodautoscalers", v) for v in CRUD),
    *(("keda.sh", "scaledobjects", v) for v in CRUD),
    *(("monitoring.coreos.com", "servicemonitors", v) for v in CRUD),
}
READ = ("get", "list", "watch")
CRD_READ = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in READ}
GATEWAY_RULES = {("discovery.k8s.io", "endpointslices", v) for v in READ}


@functools.cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    files = chart().render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return [
        doc for path, text in sorted(files.items()) if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc
    ]


def notes(values: dict[str, Any] | None = None) -> str:
    files = chart().render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in files.items() if path.endswith("NOTES.txt"))


def crds() -> dict[str, dict[str, Any]]:
    """The chart's CRDs (crds/, installed by Helm itself) by name."""
    docs = (yaml.safe_load(crd["data"]) for crd in chart().crds)
    return {doc["metadata"]["name"]: doc for doc in docs}


def crd_schemas() -> dict[tuple[str, str], tuple[dict[str, Any], str]]:
    """(apiVersion, kind) -> (openAPIV3Schema, scope) for every version of every CRD in the chart."""
    return {
        (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"]): (
            version["schema"]["openAPIV3Schema"],
            crd["spec"]["scope"],
        )
        for crd in crds().values()
        for version in crd["spec"]["versions"]
    }


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return one(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def pods(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs if d["kind"] in WORKLOAD_KINDS]


def secret_text(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def gateway_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(secret_text(one(docs, "Secret", f"{FULLNAME}-gateway-config"), "gateway.yaml"))


def postgres_password_source(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The Secret key behind the bundled PostgreSQL's POSTGRES_PASSWORD_FILE, followed through mount and volume."""
    pod = one(docs, "StatefulSet", f"{FULLNAME}-postgres")["spec"]["template"]["spec"]
    [postgres] = pod["containers"]
    assert not any(e["name"] == "POSTGRES_PASSWORD" for e in postgres["env"]), "the password belongs in a file"
    path = Path(next(e["value"] for e in postgres["env"] if e["name"] == "POSTGRES_PASSWORD_FILE"))
    mount = next(m for m in postgres["volumeMounts"] if m["mountPath"] == str(path.parent))
    secret = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]
    [item] = [i for i in secret["items"] if i["path"] == path.name]
    return {"name": secret["secretName"], "key": item["key"]}


def permissions(docs: list[dict[str, Any]], service_account: str) -> dict[str | None, set[tuple[str, str, str]]]:
    """What a ServiceAccount of the release may do, following its bindings: scope (None: cluster) -> grants."""
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    granted: dict[str | None, set[tuple[str, str, str]]] = defaultdict(set)
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subject = {"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}
        if subject not in binding["subjects"]:
            continue
        scope = binding["metadata"].get("namespace")
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"]))
        assert role is not None, f"{binding['kind']} {binding['metadata']['name']} binds a role the chart lacks"
        for rule in role["rules"]:
            granted[scope].update(itertools.product(rule["apiGroups"], rule["resources"], rule["verbs"]))
    return dict(granted)


def parse_with(module_name: str, args: list[str]) -> argparse.Namespace:
    """Parse args with a tokenyard subcommand's own parser, as `tokenyard <command>` would."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    importlib.import_module(module_name).add_arguments(parser)
    try:
        return parser.parse_args(args)
    except SystemExit:  # argparse exits on unknown arguments even with exit_on_error=False
        pytest.fail(f"{module_name} rejects the chart's arguments {args}")


# --- lint, Kubernetes schemas, custom resources ---------------------------------------------------------------


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_lint_strict_is_clean(values_name):
    report = helm_python.lint(CHART, VALUE_SETS[values_name] or None, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # Severity 1 is information ("icon is recommended"); warnings (2) and errors (3) must not occur.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_manifests_are_valid_kubernetes_objects(values_name, version):
    schemas = crd_schemas()
    docs = render(VALUE_SETS[values_name]) + list(crds().values())
    problems, custom = [], []
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if key in schemas:
            schema, scope = schemas[key]
            errors = jsonschema.Draft4Validator(schema).iter_errors(doc)
            problems += [f"{where}: {e.message}" for e in errors]
            namespace = doc["metadata"].get("namespace")
            if (scope == "Namespaced") != (namespace is not None):
                problems.append(f"{where}: a {scope} resource with metadata.namespace={namespace}")
            custom.append(doc["kind"])
        elif key not in FOREIGN_KINDS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{where}: {error.message} at {'/'.join(map(str, error.path))}")
    assert problems == []
    assert custom, "the kopf peering object should have been checked against its CRD"


def test_packaged_chart_is_the_same_chart(tmp_path):
    """`helm package` (through .helmignore) keeps every template, CRD and the schema."""
    archive = helm_python.package(CHART, destination=tmp_path)
    with helm_python.Chart.load(archive) as packaged:
        assert packaged.render(EVERYTHING, name=RELEASE, namespace=NAMESPACE) == chart().render(
            EVERYTHING, name=RELEASE, namespace=NAMESPACE
        )
        assert sorted(c["name"] for c in packaged.crds) == sorted(c["name"] for c in chart().crds)
        assert packaged.schema == chart().schema


def test_kopf_peering_crds():
    """kopf's peering resources, shipped by the chart: kopf writes its keep-alives into .status of the object
    itself (a merge patch of the main resource), so there must be no status subresource."""
    by_name = crds()
    for name, kind, scope in (
        ("clusterkopfpeerings.kopf.dev", "ClusterKopfPeering", "Cluster"),
        ("kopfpeerings.kopf.dev", "KopfPeering", "Namespaced"),
    ):
        spec = by_name[name]["spec"]
        assert (spec["group"], spec["names"]["kind"], spec["scope"]) == ("kopf.dev", kind, scope)
        [version] = spec["versions"]
        assert version["name"] == "v1" and version["served"] and version["storage"]
        assert "subresources" not in version
        schema = version["schema"]["openAPIV3Schema"]
        assert schema["x-kubernetes-preserve-unknown-fields"] is True
        peer = {"identity-1": {"priority": 7, "lifetime": 60, "lastseen": "2025-01-01T00:00:00Z"}}
        jsonschema.validate({"apiVersion": "kopf.dev/v1", "kind": kind, "status": peer}, schema)


@pytest.mark.skipif(LLMD_CRD not in crds(), reason="the LLMDeployment CRD (tokenyard crd) is not generated yet")
def test_llmdeployment_crd_is_installable():
    crd = crds()[LLMD_CRD]
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)
    spec = crd["spec"]
    assert spec["group"] == "tokenyard.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "LLMDeployment" and spec["names"]["plural"] == "llmdeployments"
    assert "llmd" in spec["names"]["shortNames"], "NOTES.txt tells users to run `kubectl get llmd`"
    served = {v["name"]: v for v in spec["versions"] if v["served"]}
    assert "v1alpha1" in served
    # The operator's RBAC grants llmdeployments/status: the CRD must have that subresource.
    assert "status" in served["v1alpha1"].get("subresources", {})
    example = REPO / "examples" / "smollm2-classifier.yaml"
    if example.exists():  # the one NOTES.txt applies must be valid
        jsonschema.Draft4Validator(served["v1alpha1"]["schema"]["openAPIV3Schema"]).validate(
            yaml.safe_load(example.read_text())
        )


# --- RBAC and the watched namespaces ---------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_rbac_grants_no_wildcards_and_nothing_dangerous(values_name):
    roles = [d for d in render(VALUE_SETS[values_name]) if d["kind"] in ("Role", "ClusterRole")]
    assert roles
    for role, rule in ((r, rule) for r in roles for rule in r["rules"]):
        where = f"{role['kind']} {role['metadata']['name']}: {rule}"
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(field, [])), where
        assert not {"secrets", "roles", "clusterroles", "rolebindings", "clusterrolebindings"} & set(rule["resources"])
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), where


def test_all_namespaces_by_default():
    docs = render()
    operator = container(docs, "Deployment", f"{FULLNAME}-operator")
    version = chart().metadata["appVersion"]
    assert operator["command"] == ["tokenyard", "operator"]
    assert operator["args"] == [
        "--all-namespaces",
        "--peering=tokenyard",
        f"--runtime-image=ghcr.io/tokenyard/runtime-cuda:{version}",
        f"--runtime-cpu-image=ghcr.io/tokenyard/runtime:{version}",
        "--drift-interval=60",
        "--liveness-port=8081",
    ]
    cli = parse_with("tokenyard.operator.cli", operator["args"])
    assert cli.all_namespaces and cli.namespace == [] and cli.peering == "tokenyard" and cli.liveness_port == 8081
    assert cli.prometheus_url is None
    assert permissions(docs, f"{FULLNAME}-operator") == {
        None: OPERATOR_NAMESPACED | CRD_READ | {("kopf.dev", "clusterkopfpeerings", v) for v in (*READ, "patch")}
    }
    assert [p["metadata"]["name"] for p in find(docs, "ClusterKopfPeering")] == ["tokenyard"]
    assert find(docs, "KopfPeering") == [] and find(docs, "Role") == []

    gateway = container(docs, "Deployment", f"{FULLNAME}-gateway")
    assert parse_with("tokenyard.gateway.cli", gateway["args"]).namespace == []  # all namespaces
    assert permissions(docs, f"{FULLNAME}-gateway") == {None: GATEWAY_RULES}


def test_watched_namespaces_narrow_args_and_rbac():
    docs = render(EVERYTHING)
    operator = container(docs, "Deployment", f"{FULLNAME}-operator")
    assert operator["args"] == [
        "--namespace=a",
        "--namespace=b",
        "--peering=tokenyard",
        "--runtime-image=registry.example.com/tokenyard/runtime-cuda:0.1.0-cu13",
        "--runtime-cpu-image=registry.example.com/tokenyard/runtime@sha256:" + "0123456789abcdef" * 4,
        "--drift-interval=30",
        "--liveness-port=8081",
        "--prometheus-url=http://prometheus-operated.monitoring.svc:9090",
    ]
    cli = parse_with("tokenyard.operator.cli", operator["args"])
    assert cli.namespace == ["a", "b"] and not cli.all_namespaces
    assert cli.prometheus_url == "http://prometheus-operated.monitoring.svc:9090" and cli.drift_interval == 30
    # Cluster-wide only what kopf needs to discover resources and namespaces; the rest only in a and b.
    namespaces = {("", "namespaces", v) for v in ("list", "watch")}
    in_namespace = OPERATOR_NAMESPACED | {("kopf.dev", "kopfpeerings", v) for v in (*READ, "patch")}
    expected = {None: CRD_READ | namespaces, "a": in_namespace, "b": in_namespace}
    assert permissions(docs, f"{FULLNAME}-operator") == expected
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in find(docs, "KopfPeering")} == {
        ("a", "tokenyard"),
        ("b", "tokenyard"),
    }
    assert find(docs, "ClusterKopfPeering") == []

    gateway = container(docs, "Deployment", f"{FULLNAME}-gateway")
    cli = parse_with("tokenyard.gateway.cli", gateway["args"])
    assert cli.discovery == "kubernetes" and cli.namespace == ["a", "b"]
    assert permissions(docs, f"{FULLNAME}-gateway") == {"a": GATEWAY_RULES, "b": GATEWAY_RULES}


def test_operator_extra_args_come_last():
    docs = render({"operator": {"extraArgs": ["--priority=5"]}})
    args = container(docs, "Deployment", f"{FULLNAME}-operator")["args"]
    assert args[-1] == "--priority=5" and parse_with("tokenyard.operator.cli", args).priority == 5


# --- the gateway and its stores -----------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_gateway_reads_the_config_the_chart_renders(values_name, tmp_path):
    from tokenyard.gateway.config import load_config

    docs = render(VALUE_SETS[values_name])
    deployment = one(docs, "Deployment", f"{FULLNAME}-gateway")
    gateway = deployment["spec"]["template"]["spec"]["containers"][0]
    assert gateway["command"] == ["tokenyard", "gateway"]
    cli = parse_with("tokenyard.gateway.cli", gateway["args"])
    assert (cli.host, cli.port, cli.discovery) == ("0.0.0.0", 8080, "kubernetes")
    # --config names the key of the mounted config Secret.
    mount = next(m for m in gateway["volumeMounts"] if m["mountPath"] == str(cli.config.parent))
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    secret = one(docs, "Secret", volume["secret"]["secretName"])
    assert cli.config.name in secret["data"]

    path = tmp_path / cli.config.name
    path.write_text(secret_text(secret, cli.config.name))
    config = load_config(path, discovery=cli.discovery, namespaces=cli.namespace)  # the gateway's own loader
    redis = one(docs, "Service", f"{FULLNAME}-redis")
    assert config.redis_url == f"redis://{FULLNAME}-redis:{redis['spec']['ports'][0]['port']}/0"
    if values_name == "default":
        assert config.database_url is None and not config.semantic_enabled and config.open_access
    else:
        postgres = one(docs, "Service", f"{FULLNAME}-postgres")
        env = {e["name"]: e for e in container(docs, "StatefulSet", f"{FULLNAME}-postgres")["env"]}
        url = urlsplit(config.database_url)
        assert (url.hostname, url.port) == (postgres["metadata"]["name"], postgres["spec"]["ports"][0]["port"])
        assert url.username == env["POSTGRES_USER"]["value"] and url.path == "/" + env["POSTGRES_DB"]["value"]
        assert url.password is None  # libpq takes it from PGPASSWORD
        assert [t.name for t in config.tenants] == ["team-a", "team-b"]
        assert config.tenant_for_key("sk-team-a-example").name == "team-a"
        assert config.embeddings.url == "http://embeddings.ml.svc:8000/v1"


@pytest.mark.parametrize("store", ["redis", "postgres"])
def test_store_services_reach_their_pods(store):
    docs = render(EVERYTHING)
    service = one(docs, "Service", f"{FULLNAME}-{store}")
    statefulset = one(docs, "StatefulSet", f"{FULLNAME}-{store}")
    template = statefulset["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    port_names = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    # Only the gateway's pods may connect.
    policy = one(docs, "NetworkPolicy", f"{FULLNAME}-{store}")
    assert policy["spec"]["podSelector"]["matchLabels"] == statefulset["spec"]["selector"]["matchLabels"]
    gateway_pod_labels = one(docs, "Deployment", f"{FULLNAME}-gateway")["spec"]["template"]["metadata"]["labels"]
    [source] = policy["spec"]["ingress"][0]["from"]
    assert source["podSelector"]["matchLabels"].items() <= gateway_pod_labels.items()


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_every_pod_admits_only_the_ports_it_serves(values_name):
    docs = render(VALUE_SETS[values_name])
    policies = find(docs, "NetworkPolicy")
    for workload in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        [policy] = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        admitted = {(p["protocol"], p["port"]) for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        [serving] = workload["spec"]["template"]["spec"]["containers"]
        served = {(p["protocol"], p["containerPort"]) for p in serving["ports"]}
        assert admitted == served, workload["metadata"]["name"]


def test_gateway_config_change_rolls_the_pods():
    def checksum(values: dict[str, Any]) -> str:
        pod = one(render(values), "Deployment", f"{FULLNAME}-gateway")["spec"]["template"]
        return pod["metadata"]["annotations"]["checksum/config"]

    tuned = {"gateway": {"config": {"cache": {"exact_ttl_seconds": 60}}}}
    assert checksum({}) == checksum({}) != checksum(tuned) == checksum(tuned)


def test_gateway_probes_do_not_wait_for_a_model():
    """/health is 503 until some runtime replica is healthy: probing it would leave a fresh install unready (and
    `helm install --wait` hanging) until a model is deployed. /metrics answers whenever the server runs; /ready
    too, until SIGTERM, when it fails at once so the draining pod leaves the Service."""
    gateway = container(render(), "Deployment", f"{FULLNAME}-gateway")
    for probe in ("startupProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"] == {"path": "/metrics", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert gateway["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    operator = container(render(), "Deployment", f"{FULLNAME}-operator")
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in operator["ports"]


def test_redis_persistence():
    memory = container(render(), "StatefulSet", f"{FULLNAME}-redis")["args"]
    assert memory[memory.index("--save") + 1] == "" and memory[memory.index("--appendonly") + 1] == "no"
    assert memory[memory.index("--maxmemory") + 1] == "256mb"
    assert "volumeClaimTemplates" not in one(render(), "StatefulSet", f"{FULLNAME}-redis")["spec"]

    statefulset = one(render(EVERYTHING), "StatefulSet", f"{FULLNAME}-redis")
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--save" not in args and args[args.index("--appendonly") + 1] == "yes"
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"] == {"storage": "2Gi"}
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert "volumes" not in statefulset["spec"]["template"]["spec"]


def test_optional_parts_switch_off():
    docs = render({"redis": {"enabled": False}, "networkPolicy": {"enabled": False}})
    assert not [d for d in docs if d["metadata"]["name"].endswith(("-redis", "-postgres"))]
    assert find(docs, "NetworkPolicy") == [] and find(docs, "ServiceMonitor") == []
    assert "redis_url" not in gateway_config(docs) and "database_url" not in gateway_config(docs)


def test_service_monitor_scrapes_the_gateway():
    docs = render(EVERYTHING)
    monitor = one(docs, "ServiceMonitor", f"{FULLNAME}-gateway")
    service = one(docs, "Service", f"{FULLNAME}-gateway")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint == {"port": service["spec"]["ports"][0]["name"], "path": "/metrics", "interval": "15s"}
    assert service["spec"]["ports"][0] == {"name": "http", "port": 8443, "targetPort": "http", "protocol": "TCP"}


# --- values.schema.json ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_schema_accepts_the_shipped_values(values_name):
    chart().validate_schema(VALUE_SETS[values_name])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gateway": {"replicsa": 3}}, "at '/gateway': additional properties 'replicsa' not allowed"),
        ({"redis": {"persistance": {"enabled": True}}}, "at '/redis': additional properties 'persistance' not allowed"),
        ({"nonsense": 1}, "additional properties 'nonsense' not allowed"),
        ({"operator": {"replicas": "two"}}, "at '/operator/replicas': got string, want integer"),
        ({"redis": {"enabled": "yes"}}, "at '/redis/enabled': got string, want boolean"),
        ({"operator": {"watchNamespaces": "a"}}, "at '/operator/watchNamespaces': got string, want array"),
        ({"operator": {"watchNamespaces": ["Team_A"]}}, "'Team_A' does not match pattern"),
        (
            {"gateway": {"config": {"tenants": [{"name": "t", "api_key_sha256": ["sk-plaintext-key"]}]}}},
            "at '/gateway/config/tenants/0/api_key_sha256/0': 'sk-plaintext-key' does not match pattern",
        ),
        ({"gateway": {"config": {"redis_url": "redis://x"}}}, "additional properties 'redis_url' not allowed"),
        ({"gateway": {"config": {"cache": {"semantic_threshold": 1.5}}}}, "semantic_threshold"),
        ({"postgres": {"external": {"existingSecret": "db"}}}, "at '/postgres/external/url'"),
    ],
)
def test_schema_rejects_bad_values_with_a_readable_message(values, message):
    with pytest.raises(helm_python.HelmValuesError) as error:
        chart().render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(error.value)


def test_schema_mirrors_the_gateway_config_model():
    """gateway.config is the gateway's own YAML: its schema lists the model's fields, less the ones the chart sets
    (stores from the redis/postgres values, discovery and namespaces from operator.watchNamespaces)."""
    from tokenyard.gateway import config as model

    schema = json.loads((CHART / "values.schema.json").read_text())

    def properties(node: dict[str, Any]) -> set[str]:
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        assert node.get("additionalProperties") is False
        return set(node["properties"])

    config = schema["properties"]["gateway"]["properties"]["config"]
    # upstream_api_key comes from a Secret, through the environment (gateway.upstreamApiKey), never the config
    chart_managed = {"redis_url", "database_url", "discovery", "namespaces", "upstreams", "upstream_api_key"}
    assert properties(config) == set(model.GatewayConfig.model_fields) - chart_managed
    nested = config["properties"]
    assert properties(nested["tenants"]["items"]) == set(model.Tenant.model_fields)
    assert properties(nested["cache"]) == set(model.CachePolicy.model_fields)
    assert properties(nested["cache_rules"]["items"]) == set(model.CacheRule.model_fields)
    assert properties(nested["embeddings"]) == set(model.Embeddings.model_fields)


# --- hardening and secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_every_container_is_hardened_and_has_requests(values_name):
    workloads = pods(render(VALUE_SETS[values_name]))
    assert len(workloads) == (3 if values_name == "default" else 4)
    for name, pod in workloads:
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security.get("runAsUser") != 0, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), name
        assert not any("hostPath" in volume for volume in pod.get("volumes", [])), name
        for c in pod["containers"] + pod.get("initContainers", []):
            where = f"{name}/{c['name']}"
            context = c["securityContext"]
            assert context["runAsNonRoot"] is True and context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True and not context.get("privileged"), where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert "memory" in c["resources"]["limits"], where


@pytest.mark.parametrize("image", ["operator", "gateway"])
def test_pods_run_as_the_image_user(image):
    """The images' USER (docker/) and the chart's runAsUser/runAsGroup agree."""
    dockerfile = REPO / "docker" / f"{image}.Dockerfile"
    if not dockerfile.exists():
        pytest.skip(f"{dockerfile.name} is not written yet")
    [user] = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
    security = one(render(), "Deployment", f"{FULLNAME}-{image}")["spec"]["template"]["spec"]["securityContext"]
    assert user == f"{security['runAsUser']}:{security['runAsGroup']}"


EXTERNAL_STORES = {
    "redis": {"enabled": False, "external": {"url": "redis://:r3dis-s3cret@cache.example:6379/0"}},
    "postgres": {"external": {"url": "postgresql://app:pg-s3cret@db.example:5432/app"}},
}


@pytest.mark.parametrize(
    ("values", "passwords"),
    [
        (EVERYTHING, ["correct-horse-battery-staple"]),
        ({"postgres": {"enabled": True}}, []),  # generated: read back from its Secret below
        (EXTERNAL_STORES, ["r3dis-s3cret", "pg-s3cret"]),
    ],
    ids=["given", "generated", "external"],
)
def test_passwords_stay_in_secrets(values, passwords):
    docs = render(values)
    secrets = find(docs, "Secret")
    if not passwords:
        passwords = [secret_text(one(docs, "Secret", f"{FULLNAME}-postgres"), "password")]
    in_secrets = "\n".join(secret_text(s, key) for s in secrets for key in s["data"])
    for password in passwords:
        assert password in in_secrets
        leaks = [f"{d['kind']} {d['metadata']['name']}" for d in docs if d["kind"] != "Secret" and password in str(d)]
        assert leaks == [], f"a password outside a Secret: {leaks}"
        assert password not in notes(values)
    assert find(docs, "ConfigMap") == []


def test_bundled_postgres_password_is_generated_and_kept():
    docs = render({"postgres": {"enabled": True}})
    secret = one(docs, "Secret", f"{FULLNAME}-postgres")
    assert re.fullmatch(r"[A-Za-z0-9]{32}", secret_text(secret, "password"))
    # Kept on uninstall: the data directory keeps the first password, a reinstall must find the same one.
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    reference = {"name": f"{FULLNAME}-postgres", "key": "password"}
    gateway = {e["name"]: e for e in container(docs, "Deployment", f"{FULLNAME}-gateway")["env"]}
    assert postgres_password_source(docs) == reference
    assert gateway["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == reference
    statefulset = one(docs, "StatefulSet", f"{FULLNAME}-postgres")
    assert statefulset["spec"]["template"]["spec"]["containers"][0]["image"] == "pgvector/pgvector:pg17"
    assert statefulset["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 999
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"


@pytest.mark.parametrize(
    ("values", "reference"),
    [
        (
            {"postgres": {"enabled": True, "auth": {"existingSecret": "pg-auth", "existingSecretPasswordKey": "pw"}}},
            {"name": "pg-auth", "key": "pw"},
        ),
        (
            {"postgres": {"external": {"url": "postgresql://app@db.example:5432/app", "existingSecret": "db"}}},
            {"name": "db", "key": "password"},
        ),
    ],
    ids=["bundled", "external"],
)
def test_existing_password_secrets_are_referenced_not_copied(values, reference):
    docs = render(values)
    assert [s["metadata"]["name"] for s in find(docs, "Secret")] == [f"{FULLNAME}-gateway-config"]
    gateway = {e["name"]: e for e in container(docs, "Deployment", f"{FULLNAME}-gateway")["env"]}
    assert gateway["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == reference
    assert urlsplit(gateway_config(docs)["database_url"]).password is None
    if values["postgres"].get("enabled"):
        assert postgres_password_source(docs) == reference


def test_gateway_drains_within_the_pods_grace_period():
    pod = one(render({"gateway": {"shutdownGraceSeconds": 45}}), "Deployment", f"{FULLNAME}-gateway")["spec"]
    cli = parse_with("tokenyard.gateway.cli", pod["template"]["spec"]["containers"][0]["args"])
    assert cli.shutdown_grace_seconds == 45 and cli.max_request_body_bytes == 4 << 20
    assert pod["template"]["spec"]["terminationGracePeriodSeconds"] == 50


@pytest.mark.parametrize(
    ("values", "reference"),
    [
        ({}, None),
        ({"create": True}, {"name": f"{FULLNAME}-upstream-api-key", "key": "api-key"}),
        ({"existingSecret": "runtime-key", "existingSecretKey": "token"}, {"name": "runtime-key", "key": "token"}),
    ],
    ids=["none", "generated", "existing"],
)
def test_the_gateways_upstream_key_comes_from_a_secret(values, reference):
    docs = render({"gateway": {"upstreamApiKey": values}})
    gateway = container(docs, "Deployment", f"{FULLNAME}-gateway")
    env = {e["name"]: e for e in gateway["env"]}
    generated = find(docs, "Secret", f"{FULLNAME}-upstream-api-key")
    if reference is None:
        assert "TOKENYARD_UPSTREAM_API_KEY" not in env and generated == []
        return
    assert env["TOKENYARD_UPSTREAM_API_KEY"]["valueFrom"]["secretKeyRef"] == reference
    assert not any("api-key" in arg or "api_key" in arg for arg in gateway["args"])  # never in the process list
    if values.get("create"):
        assert re.fullmatch(r"[A-Za-z0-9]{48}", secret_text(one(docs, "Secret", reference["name"]), "api-key"))
    else:
        assert generated == []


# --- names, labels, NOTES -------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_names_labels_and_scopes(values_name):
    version = chart().metadata["appVersion"]
    for doc in render(VALUE_SETS[values_name]):
        meta = doc["metadata"]
        where = f"{doc['kind']} {meta['name']}"
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "tokenyard" and labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == version and labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "tokenyard-0.1.0" and labels["app.kubernetes.io/component"], where
        # The kopf peering object's name is the operator's --peering; everything else carries the release prefix.
        assert meta["name"].startswith(FULLNAME) or doc["kind"].endswith("KopfPeering"), where
        assert (doc["kind"] in CLUSTER_KINDS) == ("namespace" not in meta), where
        if doc["kind"] in WORKLOAD_KINDS:
            pod_labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), where


def test_notes_walk_through_a_first_request():
    text = notes()
    assert "kubectl apply -f examples/smollm2-classifier.yaml" in text
    assert (REPO / "examples" / "smollm2-classifier.yaml").exists()
    assert "kubectl get llmd -w" in text
    assert f"port-forward svc/{FULLNAME}-gateway 8080:80" in text
    assert "/v1/chat/completions" in text and '"model": "HuggingFaceTB/SmolLM2-135M-Instruct"' in text
    assert "Authorization: Bearer" not in text and "Authorization: Bearer" in notes(EVERYTHING)
