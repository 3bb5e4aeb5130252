"""deploy/kubernetes: every overlay rendered with `kubectl kustomize` (offline, no cluster)
and checked against the code: the probes are routes the ops server serves, on the port it
listens on in every pod; the cluster port and the pods' DNS names are what the entrypoint
derives from the same environment; the ConfigMap passes validate-config; every path the
config writes is on the pod's volume and writable by the image's user; labels and
selectors agree; the security context, the network policy and each overlay's identity.

With kubernetes-validate (test extra) the rendered objects are validated against the
Kubernetes OpenAPI schemas it ships (offline); the PodMonitor is a CRD and is left out.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml  # pinned in the test extras

from connectors.ops.auth import Authorizer, Credentials
from connectors.ops.server import OpsServer
from dataflow import cli, cluster, runtime
from dataflow.config import Config, RuntimeConfig, load_config
from tests.conftest import ROOT
from tests.deploy.test_image import image_env, image_user, one

KUSTOMIZE = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.parent.name for p in (KUSTOMIZE / "overlays").glob("*/kustomization.yaml"))
TARGETS = ["base", *(f"overlays/{o}" for o in OVERLAYS)]
KUBECTL = shutil.which("kubectl")
K8S_VERSIONS = ("1.30", "1.32")
"""Kubernetes versions the objects are validated against (kubectl here is 1.32)."""
READ_ONLY_DIRS = {"tables_dir"}
"""RuntimeConfig ``*_dir`` fields the connector only reads."""

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) not found")


@functools.cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run([str(KUBECTL), "kustomize", str(KUSTOMIZE / target)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One rendered kustomization, with accessors for what the checks look at."""

    target: str
    docs: tuple[dict[str, Any], ...]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.of(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.target}: {len(found)} {kind} {name or ''}"
        return found[0]

    @property
    def sts(self) -> dict[str, Any]:
        return self.one("StatefulSet")

    @property
    def pod(self) -> dict[str, Any]:
        return self.sts["spec"]["template"]

    @property
    def container(self) -> dict[str, Any]:
        (c,) = [c for c in self.pod["spec"]["containers"] if c["name"] == "s3sentinel"]
        return c

    @property
    def namespace(self) -> str:
        return self.sts["metadata"].get("namespace", "default")

    def env(self) -> dict[str, str]:
        """The container's literal env values."""
        return {e["name"]: e["value"] for e in self.container.get("env", []) if "value" in e}

    def env_from(self, name: str) -> dict[str, Any]:
        (e,) = [e for e in self.container["env"] if e["name"] == name]
        return e["valueFrom"]

    def port(self, ref: int | str) -> int:
        """A container port by number or name."""
        if isinstance(ref, int):
            assert ref in {p["containerPort"] for p in self.container["ports"]}, ref
            return ref
        (p,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == ref]
        return int(p)

    def headless(self) -> dict[str, Any]:
        (svc,) = [s for s in self.of("Service") if s["spec"].get("clusterIP") == "None"]
        return svc

    def mount(self, volume: str) -> dict[str, Any]:
        (m,) = [m for m in self.container["volumeMounts"] if m["name"] == volume]
        return m

    def config_path(self, tmp: Path) -> Path:
        """The ConfigMap's TOML, written where a test can load it, under its own name."""
        env = self.env()
        mounted = Path(env["S3SENTINEL_CONFIG"])
        (vol,) = [v for v in self.pod["spec"]["volumes"] if "configMap" in v]
        assert self.mount(vol["name"])["mountPath"] == str(mounted.parent)
        cm = self.one("ConfigMap", vol["configMap"]["name"])
        path = tmp / mounted.name
        path.write_text(cm["data"][mounted.name])
        return path

    def config(self, tmp: Path, extra: dict[str, str] | None = None) -> Config:
        """The config a pod loads: the ConfigMap, with the container's literal env."""
        return load_config(self.config_path(tmp), {**self.env(), **(extra or {})})


@pytest.fixture(params=TARGETS)
def k(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param, render(request.param))


def _pod_env(k: Rendered, ordinal: int) -> dict[str, str]:
    """What the kubelet gives pod ``ordinal``: the literal env and the downward API."""
    env = k.env()
    fields = {"metadata.name": f"{k.sts['metadata']['name']}-{ordinal}",
              "metadata.namespace": k.namespace}
    for e in k.container["env"]:
        ref = e.get("valueFrom", {}).get("fieldRef")
        if ref:
            env[e["name"]] = fields[ref["fieldPath"]]
    return env


# --------------------------------------------------------------------------- ops: probes


class _AlwaysReady:
    def run(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def ops_server(k: Rendered, tmp_path: Path) -> Iterator[OpsServer]:
    """The real ops server with the ConfigMap's [ops] section (on loopback, any port)."""
    ops = k.config(tmp_path).ops
    ops = dataclasses.replace(ops, bind="127.0.0.1", audit_log=str(tmp_path / "audit.jsonl"))
    readiness: Any = _AlwaysReady()  # the checks call S3 and Azure: not what is tested here
    server = OpsServer(ops, [], 0, Authorizer(lambda: Credentials()), readiness,
                       lambda dry_run: "", lambda: None).start()
    try:
        yield server
    finally:
        server.stop()


def _get(server: OpsServer, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(server.url + path, timeout=5) as r:  # no token: as a kubelet
        return r.status, r.read()


def test_probes_are_open_routes_of_the_ops_server(k: Rendered, ops_server: OpsServer) -> None:
    c = k.container
    status, body = _get(ops_server, c["livenessProbe"]["httpGet"]["path"])
    assert status == 200 and orjson.loads(body)["alive"] is True
    status, body = _get(ops_server, c["startupProbe"]["httpGet"]["path"])
    assert status == 200 and orjson.loads(body)["alive"] is True
    status, body = _get(ops_server, c["readinessProbe"]["httpGet"]["path"])
    assert status == 200 and orjson.loads(body)["ready"] is True
    (endpoint,) = k.one("PodMonitor")["spec"]["podMetricsEndpoints"]
    status, body = _get(ops_server, endpoint["path"])
    assert status == 200 and b"s3sentinel_" in body


def test_every_pod_serves_ops_on_the_probed_port(k: Rendered, tmp_path: Path) -> None:
    """The flow serves on ops.port + process id (dataflow.runtime); with the entrypoint's
    override, every pod serves on the one port its probes, its Service and the PodMonitor
    name, on an address the kubelet reaches."""
    c = k.container
    probed = {k.port(c[p]["httpGet"]["port"])
              for p in ("livenessProbe", "readinessProbe", "startupProbe")}
    (endpoint,) = k.one("PodMonitor")["spec"]["podMetricsEndpoints"]
    (svc_port,) = k.one("Service", "s3sentinel-ops")["spec"]["ports"]
    assert probed == {k.port(endpoint["port"]), k.port(svc_port["targetPort"])}
    assert svc_port["port"] == k.port(svc_port["targetPort"])
    (port,) = probed
    config = str(k.config_path(tmp_path))
    for ordinal in range(k.sts["spec"]["replicas"]):
        env = _pod_env(k, ordinal)
        plan = cluster.plan_from_env(env)
        overrides = cluster.ops_port_env()
        argv = cluster.command(plan, config)
        ops = load_config(config, {**env, **overrides}).ops
        served = ops.port + (runtime.process_index(argv) if ops.port_per_process else 0)
        assert served == port, f"pod {ordinal} serves ops on {served}, probed on {port}"
    assert k.config(tmp_path).ops.bind in ("0.0.0.0", "::")
    assert k.config(tmp_path).ops.open_metrics, "the kubelet's probes carry no token"


# --------------------------------------------------------------------------- the bytewax cluster


def test_pod_dns_names_and_cluster_port_are_what_the_entrypoint_derives(k: Rendered) -> None:
    sts, svc = k.sts, k.headless()
    env = k.env()
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"] == env[cluster.ENV_SERVICE]
    assert svc["spec"]["publishNotReadyAddresses"] is True
    (svc_port,) = svc["spec"]["ports"]
    port = k.port("cluster")
    assert svc_port["port"] == k.port(svc_port["targetPort"]) == port
    assert int(env.get(cluster.ENV_CLUSTER_PORT, cluster.DEFAULT_CLUSTER_PORT)) == port
    assert int(env[cluster.ENV_REPLICAS]) == sts["spec"]["replicas"]
    replicas = sts["spec"]["replicas"]
    # Kubernetes names pod k of a StatefulSet <sts>-k, with the DNS name
    # <pod>.<serviceName>.<namespace>.svc.<cluster domain>.
    names = [f"{sts['metadata']['name']}-{o}.{svc['metadata']['name']}.{k.namespace}.svc."
             f"{cluster.DEFAULT_CLUSTER_DOMAIN}:{port}" for o in range(replicas)]
    for ordinal in range(replicas):
        plan = cluster.plan_from_env(_pod_env(k, ordinal))
        assert plan.process_id == ordinal
        assert list(plan.addresses) == names
        assert plan.workers == int(k.env().get(cluster.ENV_WORKERS, "1"))
    with pytest.raises(cluster.ClusterEnvError, match=f"ordinal {replicas}"):
        cluster.plan_from_env(_pod_env(k, replicas))  # `kubectl scale` past the env: refused


def test_the_statefulset_starts_and_replaces_all_processes_together(k: Rendered) -> None:
    spec = k.sts["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "OnDelete"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain",
                                                            "whenScaled": "Retain"}


def test_the_grace_period_outlasts_a_snapshot(k: Rendered, tmp_path: Path) -> None:
    grace = k.pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= k.config(tmp_path).runtime.snapshot_secs


# --------------------------------------------------------------------------- config and storage


def test_the_configmap_passes_validate_config(k: Rendered, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for name in list(os.environ):
        if name.startswith("S3SENTINEL"):
            monkeypatch.delenv(name)
    for name, value in k.env().items():
        monkeypatch.setenv(name, value)
    assert cli.main(["validate-config", "-c", str(k.config_path(tmp_path))]) == 0, \
        capsys.readouterr().err
    (target,) = k.config(tmp_path).targets  # the [[targets]] form, its DCRs with endpoints
    assert target.dcrs and all(d.endpoint for d in target.dcrs)


def _written_paths(cfg: Config) -> dict[str, str]:
    rt = cfg.runtime
    out = {f"runtime.{f.name}": getattr(rt, f.name) for f in dataclasses.fields(RuntimeConfig)
           if f.name.endswith("_dir") and f.name not in READ_ONLY_DIRS}
    out["ops.audit_log"] = str(Path(cfg.ops.audit_log).parent)
    return out


def test_every_path_the_config_writes_is_on_the_pods_volume(k: Rendered, tmp_path: Path) -> None:
    (claim,) = k.sts["spec"]["volumeClaimTemplates"]
    data = Path(k.mount(claim["metadata"]["name"])["mountPath"])
    assert not k.mount(claim["metadata"]["name"]).get("readOnly", False)
    assert k.container["securityContext"]["readOnlyRootFilesystem"] is True
    cwd = Path(k.container.get("workingDir") or one("WORKDIR"))
    written = _written_paths(k.config(tmp_path))
    written |= {"TMPDIR": image_env()["TMPDIR"], "HOME": image_env()["HOME"]}
    for what, path in written.items():
        resolved = (cwd / path).resolve()
        assert resolved == data or data in resolved.parents, \
            f"{what} = {path} is not on the volume mounted at {data}"
    assert cwd == data == Path(one("WORKDIR"))
    for m in k.container["volumeMounts"]:
        if Path(m["mountPath"]) != data:
            assert m.get("readOnly") is True, m


def test_the_volume_is_writable_by_the_images_user(k: Rendered) -> None:
    uid, gid = image_user()
    pod, container = k.pod["spec"]["securityContext"], k.container["securityContext"]
    assert pod["runAsUser"] == container["runAsUser"] == uid
    assert pod["runAsGroup"] == container["runAsGroup"] == gid
    assert pod["fsGroup"] == gid  # a fresh volume is made group-writable for it


# --------------------------------------------------------------------------- labels and selectors


def test_labels_and_selectors_match(k: Rendered) -> None:
    sts = k.sts
    selector = sts["spec"]["selector"]["matchLabels"]
    labels = k.pod["metadata"]["labels"]
    assert selector.items() <= labels.items()
    selected = {
        "Service/s3sentinel-cluster": k.headless()["spec"]["selector"],
        "Service/s3sentinel-ops": k.one("Service", "s3sentinel-ops")["spec"]["selector"],
        "PodDisruptionBudget": k.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "PodMonitor": k.one("PodMonitor")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": k.one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    }
    policy = k.one("NetworkPolicy")["spec"]
    for i, rule in enumerate(policy["ingress"]):
        for peer in rule["from"]:
            if "podSelector" in peer and "namespaceSelector" not in peer:
                selected[f"NetworkPolicy ingress {i}"] = peer["podSelector"]["matchLabels"]
    for i, rule in enumerate(policy["egress"]):
        for peer in rule["to"]:
            if "podSelector" in peer and "namespaceSelector" not in peer:
                selected[f"NetworkPolicy egress {i}"] = peer["podSelector"]["matchLabels"]
    for i, c in enumerate(k.pod["spec"]["topologySpreadConstraints"]):
        selected[f"topologySpreadConstraints {i}"] = c["labelSelector"]["matchLabels"]
    for what, sel in selected.items():
        assert sel == selector, f"{what} selects {sel}, the StatefulSet's pods are {selector}"
    namespaces = {d["metadata"].get("namespace") for d in k.docs}
    assert len(namespaces) == 1, namespaces
    assert k.pod["spec"]["serviceAccountName"] == k.one("ServiceAccount")["metadata"]["name"]


# --------------------------------------------------------------------------- security


def test_the_pod_runs_restricted(k: Rendered) -> None:
    spec = k.pod["spec"]
    pod, c = spec["securityContext"], k.container["securityContext"]
    assert pod["runAsNonRoot"] is True and c["runAsNonRoot"] is True
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"} == c["seccompProfile"]
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("hostNetwork") and not spec.get("hostPID")
    res = k.container["resources"]
    for kind in ("cpu", "memory"):
        assert kind in res["requests"] and kind in res["limits"]
    assert _mib(res["requests"]["memory"]) <= _mib(res["limits"]["memory"])


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", quantity)
    assert m, quantity
    return float(m[1]) * units.get(m[2], 1 / 2**20)


def test_secrets_are_only_referenced(k: Rendered) -> None:
    secretish = re.compile(r"(?i)(secret|token|password|key)")
    for e in k.container["env"]:
        if secretish.search(e["name"]) and not e["name"].endswith("_FILE"):  # (a path)
            assert "secretKeyRef" in e.get("valueFrom", {}), f"{e['name']} is a literal"
    assert not k.of("Secret"), "Secrets are created apart, never rendered with the manifests"


def test_the_network_policy_allows_only_what_the_connector_needs(k: Rendered) -> None:
    policy = k.one("NetworkPolicy")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    ops, peer = k.port("ops"), k.port("cluster")
    labels = k.sts["spec"]["selector"]["matchLabels"]

    def rules(direction: str, side: str) -> list[tuple[str, set[tuple[int, str]]]]:
        out = []
        for rule in policy[direction]:
            assert rule.get("ports"), f"a {direction} rule without ports allows every port"
            ports = {(k.port(p["port"]) if direction == "ingress" else p["port"],
                      p.get("protocol", "TCP")) for p in rule["ports"]}
            for who in rule[side]:
                if "ipBlock" in who:
                    out.append((f"ip:{who['ipBlock']['cidr']}", ports))
                elif "namespaceSelector" in who:
                    ns = who["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    out.append((f"ns:{ns}", ports))
                else:
                    assert who["podSelector"]["matchLabels"] == labels
                    out.append(("peers", ports))
        return out

    assert sorted(rules("ingress", "from")) == sorted([("ns:monitoring", {(ops, "TCP")}),
                                                       ("peers", {(peer, "TCP")})])
    egress = rules("egress", "to")
    assert ("ns:kube-system", {(53, "UDP"), (53, "TCP")}) in egress
    assert ("peers", {(peer, "TCP")}) in egress
    https = [who for who, ports in egress if ports == {(443, "TCP")}]
    assert sorted(https) == ["ip:0.0.0.0/0", "ip:::/0"]
    assert len(egress) == 4


def test_the_disruption_budget_moves_one_process_at_a_time(k: Rendered) -> None:
    pdb = k.one("PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_image_is_this_version(k: Rendered) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert k.container["image"].rsplit(":", 1)[1] == version


# --------------------------------------------------------------------------- identities


def _sa_annotations(k: Rendered) -> dict[str, str]:
    return k.one("ServiceAccount")["metadata"].get("annotations", {})


def _env_names(k: Rendered) -> set[str]:
    return {e["name"] for e in k.container["env"]}


def test_the_aks_overlay_uses_entra_workload_identity(tmp_path: Path) -> None:
    k = Rendered("overlays/aks", render("overlays/aks"))
    client_id = _sa_annotations(k)["azure.workload.identity/client-id"]
    assert re.fullmatch(r"[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", client_id)
    assert k.pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert "azure.workload.identity/use" not in k.sts["spec"]["selector"]["matchLabels"]
    assert not _env_names(k) & {"AZURE_CLIENT_SECRET", "AZURE_CLIENT_ID", "AWS_ACCESS_KEY_ID",
                                "AWS_SECRET_ACCESS_KEY"}
    cfg = k.config(tmp_path)
    # DefaultAzureCredential takes the token the webhook projects; AWS is read with that
    # identity's Entra token, exchanged with STS (no AWS key).
    assert all(t.credential == "default" for t in cfg.targets)
    assert cfg.aws.web_identity_role_arn.startswith("arn:aws:iam::")
    assert cfg.aws.web_identity_credential == "workload_identity"


def test_the_eks_overlay_uses_iam_roles_for_service_accounts(tmp_path: Path) -> None:
    k = Rendered("overlays/eks", render("overlays/eks"))
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+",
                        _sa_annotations(k)["eks.amazonaws.com/role-arn"])
    assert not _env_names(k) & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                "AZURE_CLIENT_SECRET"}
    # Azure by workload identity federation: the target reads the projected token whose
    # audience Entra's federated credential expects.
    (target,) = k.config(tmp_path).targets
    assert target.credential == "workload_identity" and target.client_id and target.tenant_id
    mounts = {m["name"]: m["mountPath"] for m in k.container["volumeMounts"]}
    (vol,) = [v for v in k.pod["spec"]["volumes"] if v["name"] == "azure-identity-token"]
    (src,) = vol["projected"]["sources"]
    token = src["serviceAccountToken"]
    assert token["audience"] == "api://AzureADTokenExchange"
    assert target.token_file == f"{mounts['azure-identity-token']}/{token['path']}"


def test_the_generic_overlay_takes_credentials_from_secrets() -> None:
    k = Rendered("overlays/generic", render("overlays/generic"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AZURE_TENANT_ID",
                 "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"):
        assert "secretKeyRef" in k.env_from(name), name
    assert not {"azure.workload.identity/client-id", "eks.amazonaws.com/role-arn"} \
        & _sa_annotations(k).keys()


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_objects_are_valid_kubernetes(k: Rendered, version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in k.docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: not in the Kubernetes schemas
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as ex:
            where = ".".join(str(p) for p in ex.path)
            pytest.fail(f"{k.target}: {doc['kind']}/{doc['metadata']['name']} against "
                        f"{version}: {where}: {ex.message}")
