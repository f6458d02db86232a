"""deploy/kubernetes, checked offline.

`kubectl apply --dry-run=client` still asks a cluster for its API resources, so the manifests are
rendered with `kubectl kustomize` (no cluster needed; secret files made as the kustomization says, in a
copy) and checked here: kinds and API versions,
required fields, selectors that match the pods' labels, Service target ports that are container
ports, every Secret, ConfigMap, volume and claim referred to exists with the key asked for, and what
the node reads: its settings file and every URONODE_ variable are loaded by the node's own settings
code, its ports and data folder are those settings, and the workers' --node URL and the broker URL
name the Services that carry them, and the node's worker tokens file holds the hash of the workers'
token. Each check is shown to fail on a manifest broken on purpose.
"""

from __future__ import annotations

import copy
import hashlib
import re
import secrets as secrets_module
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.peers.processes import require
from tests.test_deploy_files import cli_accepts, redis_as_configured
from tests.test_readme import leaves
from uronode.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZATION = ROOT / "deploy" / "kubernetes"

Doc = dict[str, Any]

API_VERSIONS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
ENV_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
NODE, WORKER, REDIS = "uronode", "uronode-worker", "uronode-redis"
SETTING_NAMES = {"URONODE_" + name.upper().replace(".", "__") for name in leaves(Settings)}


def render(where: Path) -> list[Doc]:
    """The manifests as `kubectl apply -k` would send them, with secret files made the way the kustomization says."""
    copy_of = where / "kubernetes"
    shutil.copytree(KUSTOMIZATION, copy_of, ignore=shutil.ignore_patterns("secrets"))
    secrets = copy_of / "secrets"
    secrets.mkdir()
    token = secrets_module.token_hex(32)
    (secrets / "redis-password").write_text(secrets_module.token_hex(32))
    (secrets / "http-password").write_text(secrets_module.token_hex(16))
    (secrets / "worker-token").write_text(token + "\n")
    digest = hashlib.sha256(token.encode()).hexdigest()
    (secrets / "worker-tokens").write_text(f"# made by uronode worker-token\ncluster-workers {digest}\n")
    done = subprocess.run(
        [require("kubectl"), "kustomize", str(copy_of)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def named(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def containers(deployment: Doc) -> list[Doc]:
    return list(deployment["spec"]["template"]["spec"].get("containers") or [])


def container_env(container: Doc, secrets: dict[str, Doc]) -> dict[str, str]:
    """The container's environment as the kubelet makes it: Secret keys read, $(VAR) expanded."""
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = ENV_REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), str(var["value"]))
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_data(secrets[ref["name"]])[ref["key"]]
    return env


def secret_data(secret: Doc) -> dict[str, str]:
    import base64

    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return data | dict(secret.get("stringData") or {})


def structure_problems(docs: list[Doc]) -> list[str]:
    """What a cluster's API server or kubelet would refuse, or run wrong, in these manifests."""
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name", "")
        if kind not in API_VERSIONS:
            problems.append(f"{kind} {name}: a kind these manifests do not use")
            continue
        if doc.get("apiVersion") != API_VERSIONS[kind]:
            problems.append(f"{kind} {name}: apiVersion {doc.get('apiVersion')} (want {API_VERSIONS[kind]})")
        if not DNS_LABEL.match(name):
            problems.append(f"{kind} {name!r}: not a DNS label")
        if (kind, name) in seen:
            problems.append(f"{kind} {name}: defined twice")
        seen.add((kind, name))
    secrets, configmaps = named(docs, "Secret"), named(docs, "ConfigMap")
    claims, deployments = named(docs, "PersistentVolumeClaim"), named(docs, "Deployment")

    for name, claim in claims.items():
        spec = claim.get("spec") or {}
        if not spec.get("accessModes") or not ((spec.get("resources") or {}).get("requests") or {}).get("storage"):
            problems.append(f"PersistentVolumeClaim {name}: needs accessModes and a storage request")

    for name, deployment in deployments.items():
        spec = deployment.get("spec") or {}
        match = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not match or any(labels.get(k) != v for k, v in match.items()):
            problems.append(f"Deployment {name}: selector {match} does not match its pods' labels {labels}")
        if not isinstance(spec.get("replicas"), int) or spec["replicas"] < 0:
            problems.append(f"Deployment {name}: replicas must be a count")
        pod = (spec.get("template") or {}).get("spec") or {}
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume and volume["persistentVolumeClaim"]["claimName"] not in claims:
                problems.append(f"Deployment {name}: volume {volume['name']} claims a missing claim")
            if "configMap" in volume and volume["configMap"]["name"] not in configmaps:
                problems.append(f"Deployment {name}: volume {volume['name']} mounts a missing ConfigMap")
            if "secret" in volume:
                secret = secrets.get(volume["secret"]["secretName"])
                if secret is None:
                    problems.append(f"Deployment {name}: volume {volume['name']} mounts a missing Secret")
                    continue
                for item in volume["secret"].get("items") or []:
                    if item["key"] not in secret_data(secret):
                        problems.append(f"Deployment {name}: Secret {secret['metadata']['name']} has no {item['key']}")
        if not containers(deployment):
            problems.append(f"Deployment {name}: no container")
        for container in containers(deployment):
            where = f"Deployment {name} container {container.get('name')}"
            if not container.get("name") or not container.get("image"):
                problems.append(f"{where}: needs a name and an image")
            ports = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
            for port_name, number in ports.items():
                if not isinstance(number, int) or not 1 <= number <= 65535:
                    problems.append(f"{where}: port {port_name} is {number}")
                if port_name is not None and len(port_name) > 15:
                    problems.append(f"{where}: port name {port_name} is longer than 15 characters")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                action = (container.get(probe) or {}).get("httpGet") or (container.get(probe) or {}).get("tcpSocket")
                if action and isinstance(action.get("port"), str) and action["port"] not in ports:
                    problems.append(f"{where}: {probe} on port {action['port']}, which it does not name")
            defined: set[str] = set()
            for var in container.get("env") or []:
                if ("value" in var) == ("valueFrom" in var):
                    problems.append(f"{where}: env {var.get('name')} needs exactly one of value and valueFrom")
                for ref in ENV_REFERENCE.findall(str(var.get("value", ""))):
                    if ref not in defined:
                        problems.append(f"{where}: env {var['name']} refers to $({ref}), not defined before it")
                source = (var.get("valueFrom") or {}).get("secretKeyRef")
                if source and source.get("key") not in secret_data(secrets.get(source.get("name"), {})):
                    problems.append(f"{where}: env {var['name']} reads {source} that no Secret holds")
                defined.add(var["name"])
            for mount in container.get("volumeMounts") or []:
                if mount["name"] not in volumes:
                    problems.append(f"{where}: mounts {mount['name']}, which is no volume of the pod")

    def selected(selector: dict[str, str]) -> list[Doc]:
        return [
            d for d in deployments.values()
            if selector and all(d["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]

    def pod_ports(deployment: Doc) -> dict[str | int, int]:
        out: dict[str | int, int] = {}
        for container in containers(deployment):
            for port in container.get("ports") or []:
                out[port["containerPort"]] = port["containerPort"]
                if port.get("name"):
                    out[port["name"]] = port["containerPort"]
        return out

    for name, service in named(docs, "Service").items():
        targets = selected((service.get("spec") or {}).get("selector") or {})
        if not targets:
            problems.append(f"Service {name}: its selector matches no Deployment's pods")
        for port in (service.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for deployment in targets:
                if target not in pod_ports(deployment):
                    problems.append(
                        f"Service {name}: port {port.get('port')} targets {target}, "
                        f"no container port of Deployment {deployment['metadata']['name']}"
                    )

    for name, policy in named(docs, "NetworkPolicy").items():
        spec = policy.get("spec") or {}
        guarded = selected((spec.get("podSelector") or {}).get("matchLabels") or {})
        if not guarded:
            problems.append(f"NetworkPolicy {name}: its podSelector matches no Deployment's pods")
        for rule in spec.get("ingress") or []:
            for peer in rule.get("from") or []:
                if "podSelector" in peer and not selected(peer["podSelector"].get("matchLabels") or {}):
                    problems.append(f"NetworkPolicy {name}: a peer selector matches no Deployment's pods")
            for port in rule.get("ports") or []:
                if any(port.get("port") not in pod_ports(d) for d in guarded):
                    problems.append(f"NetworkPolicy {name}: port {port.get('port')} is no port of the pods it guards")
    return problems


def service_for(docs: list[Doc], url: str) -> tuple[Doc, Doc]:
    """The Service a URL inside the cluster names, and the Deployment behind its port."""
    parts = urlsplit(url)
    service = named(docs, "Service")[str(parts.hostname)]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == parts.port]
    (deployment,) = [
        d for d in named(docs, "Deployment").values()
        if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())
    ]
    return port, deployment


def node_problems(docs: list[Doc], environ: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """What would make the node, Redis or the workers run other than this project means them to."""
    problems: list[str] = []
    deployments, secrets = named(docs, "Deployment"), named(docs, "Secret")
    configmaps = named(docs, "ConfigMap")
    try:
        node, worker, redis = deployments[NODE], deployments[WORKER], deployments[REDIS]
    except KeyError as missing:
        return [f"no Deployment {missing}"]
    if node["spec"]["replicas"] != 1 or node["spec"].get("strategy", {}).get("type") != "Recreate":
        problems.append("the node must run as one replica, replaced (Recreate), never two on its data")

    for deployment in deployments.values():
        for container in containers(deployment):
            for var in container.get("env") or []:
                if var["name"].startswith("URONODE_") and var["name"] not in SETTING_NAMES | {"URONODE_CONFIG"}:
                    problems.append(f"{deployment['metadata']['name']}: {var['name']} is no setting the node reads")

    (node_container,) = containers(node)
    node_args = [str(a) for a in node_container.get("command", []) + node_container.get("args", [])]
    if node_args[:2] != ["uronode", "serve"] or not cli_accepts(node_args):
        problems.append(f"the node runs {shlex.join(node_args)}, not uronode serve")
    env = container_env(node_container, secrets)
    mounts = {m["mountPath"]: m["name"] for m in node_container.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in node["spec"]["template"]["spec"].get("volumes") or []}
    # The settings file as the node would find it: from the ConfigMap mounted where URONODE_CONFIG points.
    config = Path(env.get("URONODE_CONFIG", "/nowhere"))
    source = volumes.get(mounts.get(str(config.parent), ""), {}).get("configMap", {}).get("name")
    if config.name not in configmaps.get(source, {}).get("data", {}):
        return problems + [f"URONODE_CONFIG {config} is no file of a ConfigMap mounted in the node"]
    local = tmp_path / config.name
    local.write_text(configmaps[source]["data"][config.name])
    for name in list(SETTING_NAMES) + ["URONODE_CONFIG"]:
        environ.delenv(name, raising=False)
    for name, value in env.items():
        if name.startswith("URONODE_") and name != "URONODE_CONFIG":
            environ.setenv(name, value)
    try:
        settings = load_settings(config_file=local)
    except ConfigError as error:
        return problems + [f"the node would not start: {error}"]
    dumped = settings.model_dump()

    ports = {p["name"]: p["containerPort"] for p in node_container.get("ports") or []}
    if ports.get("dicom") != settings.scp.port or ports.get("http") != settings.dicomweb.port:
        problems.append(f"the node's container ports {ports} are not its settings' ({settings.scp.port}, "
                        f"{settings.dicomweb.port})")
    data = volumes.get(mounts.get(str(settings.storage.data_dir), ""), {})
    if "persistentVolumeClaim" not in data:
        problems.append(f"the node's data folder {settings.storage.data_dir} is not on its claim")
    queue = dumped.get("queue") or {}
    if queue.get("backend") != "dramatiq" or settings.inference.workers != 0:
        problems.append("the node must hand every job to the workers (queue.backend dramatiq, inference.workers 0)")

    # Node and workers reach the same Redis, through its Service, with the password Redis requires.
    (worker_container,) = containers(worker)
    (redis_container,) = containers(redis)
    worker_env = container_env(worker_container, secrets)
    # probe 55: the workers write the results, and in UTC they dated them apart from the node's zone
    if not env.get("TZ") or worker_env.get("TZ") != env["TZ"]:
        problems.append(f"the node (TZ {env.get('TZ')}) and the workers (TZ {worker_env.get('TZ')}) must date"
                        " results in one time zone")
    if not settings.delivery.destinations:  # probe 55: jobs 'delivered' and the PACS got nothing
        problems.append("the node sends its results nowhere: its settings name no delivery destination")
    broker = str(queue.get("broker_url"))
    if worker_env.get("URONODE_QUEUE__BROKER_URL") != broker:
        problems.append("the workers' broker URL is not the node's")
    try:
        port, behind = service_for(docs, broker)
    except (KeyError, ValueError):
        problems.append(f"the broker URL {broker} names no Service port")
    else:
        if behind is not redis:
            problems.append(f"the broker URL {broker} leads to {behind['metadata']['name']}, not Redis")
    redis_env = container_env(redis_container, secrets)
    command = " ".join(redis_container.get("command", []) + redis_container.get("args", []))
    password = urlsplit(broker).password
    if "--requirepass" not in command or not password or redis_env.get("REDIS_PASSWORD") != password:
        problems.append("Redis must require the password the broker URL carries")

    # The workers run `uronode worker --node URL --token-file FILE`, URL the node's HTTP Service, FILE a Secret's.
    args = [str(a) for a in worker_container.get("command", []) + worker_container.get("args", [])]
    if args[:2] != ["uronode", "worker"] or "--node" not in args or "--token-file" not in args:
        return problems + [f"the workers run {shlex.join(args)}, not uronode worker --node URL --token-file FILE"]
    if not cli_accepts(args):
        problems.append(f"uronode refuses {shlex.join(args)}")
    node_url = args[args.index("--node") + 1]
    try:
        port, behind = service_for(docs, node_url)
    except (KeyError, ValueError):
        problems.append(f"the workers' --node {node_url} names no Service port")
    else:
        if behind is not node or port["targetPort"] not in ("http", settings.dicomweb.port):
            problems.append(f"the workers' --node {node_url} is not the node's HTTP port")
    token = Path(args[args.index("--token-file") + 1])
    worker_mounts = {m["mountPath"]: m["name"] for m in worker_container.get("volumeMounts") or []}
    worker_volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"].get("volumes") or []}
    secret_volume = worker_volumes.get(worker_mounts.get(str(token.parent), ""), {}).get("secret") or {}
    items = {i["path"]: i["key"] for i in secret_volume.get("items") or []}
    if token.name not in items:
        return problems + [f"the workers' --token-file {token} is no file of a Secret mounted in them"]
    # The node knows the workers' token: its SHA-256 is a line of the tokens file the node reads.
    worker_token = secret_data(secrets[secret_volume["secretName"]])[items[token.name]].splitlines()[0]
    tokens_file = settings.queue.tokens_file(settings.storage.data_dir)
    source = volumes.get(mounts.get(str(tokens_file.parent), ""), {}).get("secret") or {}
    node_items = {i["path"]: i["key"] for i in source.get("items") or []}
    if tokens_file.name not in node_items:
        return problems + [f"the node's worker tokens file {tokens_file} is no file of a Secret mounted in it"]
    lines = secret_data(secrets[source["secretName"]])[node_items[tokens_file.name]].splitlines()
    known = {line.split()[1] for line in lines if line.strip() and not line.startswith("#") and len(line.split()) == 2}
    if hashlib.sha256(worker_token.encode()).hexdigest() not in known:
        problems.append("the node's worker tokens file does not hold the SHA-256 of the workers' token")
    return problems


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    return render(tmp_path_factory.mktemp("kustomize"))


def test_no_secret_is_in_the_repository_and_nothing_renders_without_them(tmp_path: Path) -> None:
    tracked = subprocess.run(
        ["git", "ls-files", str(KUSTOMIZATION / "secrets")], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked == ["deploy/kubernetes/secrets/.gitignore"]
    shutil.copytree(KUSTOMIZATION, tmp_path / "kubernetes", ignore=shutil.ignore_patterns("secrets"))
    done = subprocess.run([require("kubectl"), "kustomize", str(tmp_path / "kubernetes")], capture_output=True)
    assert done.returncode != 0


def test_the_manifests_render_and_hold_together(rendered: list[Doc]) -> None:
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in rendered)
    assert {f"Deployment/{n}" for n in (NODE, WORKER, REDIS)} <= set(kinds), kinds
    assert {"PersistentVolumeClaim/uronode-data", "Service/uronode", "Service/uronode-redis"} <= set(kinds), kinds
    assert structure_problems(rendered) == []


def test_the_node_workers_and_redis_are_wired_as_the_node_reads_them(
    rendered: list[Doc], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert node_problems(rendered, monkeypatch, tmp_path) == []


def test_the_dicom_service_answers_on_104_and_11112(rendered: list[Doc]) -> None:
    dicom = named(rendered, "Service")["uronode-dicom"]
    assert sorted(p["port"] for p in dicom["spec"]["ports"]) == [104, 11112]
    assert {p["targetPort"] for p in dicom["spec"]["ports"]} == {"dicom"}


def test_redis_keeps_nothing_on_disk(rendered: list[Doc]) -> None:
    """SQLite is the record of every job; the sweeper publishes again what a Redis restarted empty lost."""
    (redis,) = containers(named(rendered, "Deployment")[REDIS])
    command = " ".join(redis["command"] + redis["args"])
    assert "--save ''" in command and "--appendonly no" in command and "noeviction" in command
    assert not redis.get("volumeMounts")


def test_redis_runs_as_configured(rendered: list[Doc]) -> None:
    """The Redis container's command, run by the real redis-server with the Secret's password in its
    environment: it requires that password, keeps nothing on disk and evicts nothing."""
    (redis,) = containers(named(rendered, "Deployment")[REDIS])
    env = container_env(redis, named(rendered, "Secret"))
    config = redis_as_configured([str(a) for a in redis["command"] + redis["args"]], env, env["REDIS_PASSWORD"])
    assert config["save"] == "" and config["appendonly"] == "no"
    assert config["maxmemory-policy"] == "noeviction" and int(config["maxmemory"]) > 0


def broken(docs: list[Doc], where: Callable[[list[Doc]], None]) -> list[Doc]:
    copied = copy.deepcopy(docs)
    where(copied)
    return copied


def deployment(docs: list[Doc], name: str) -> Doc:
    return named(docs, "Deployment")[name]


def first_container(docs: list[Doc], name: str) -> Doc:
    return containers(deployment(docs, name))[0]


def env_var(docs: list[Doc], name: str, var: str) -> Doc:
    (found,) = [v for v in first_container(docs, name)["env"] if v["name"] == var]
    return found


STRUCTURE_BREAKS: dict[str, tuple[Callable[[list[Doc]], None], str]] = {
    "selector": (
        lambda d: deployment(d, WORKER)["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "x"}),
        "does not match its pods' labels",
    ),
    "target port": (
        lambda d: named(d, "Service")["uronode"]["spec"]["ports"][0].update({"targetPort": "web"}),
        "targets web",
    ),
    "service selector": (
        lambda d: named(d, "Service")["uronode-redis"]["spec"]["selector"].update({"app.kubernetes.io/name": "redis"}),
        "matches no Deployment",
    ),
    "secret key": (
        lambda d: env_var(d, NODE, "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"].update({"key": "redis"}),
        "that no Secret holds",
    ),
    "claim": (
        lambda d: named(d, "PersistentVolumeClaim")["uronode-data"]["metadata"].update({"name": "data"}),
        "claims a missing claim",
    ),
    "api version": (lambda d: deployment(d, REDIS).update({"apiVersion": "extensions/v1beta1"}), "apiVersion"),
    "env order": (
        lambda d: first_container(d, WORKER)["env"].reverse(),
        "not defined before it",
    ),
    "probe port": (
        lambda d: first_container(d, NODE)["readinessProbe"]["httpGet"].update({"port": "web"}),
        "which it does not name",
    ),
}

NODE_BREAKS: dict[str, tuple[Callable[[list[Doc]], None], str]] = {
    "unknown setting": (
        lambda d: first_container(d, WORKER)["env"].append({"name": "URONODE_QUEUE__BROKER", "value": "x"}),
        "is no setting the node reads",
    ),
    "bad setting value": (
        lambda d: named(d, "ConfigMap")["uronode-settings"]["data"].update(
            {"uronode.toml": named(d, "ConfigMap")["uronode-settings"]["data"]["uronode.toml"] + "\n[nothing]\n"}
        ),
        "the node would not start",
    ),
    "container port": (
        lambda d: first_container(d, NODE)["ports"][0].update({"containerPort": 104}),
        "are not its settings'",
    ),
    "local model": (
        lambda d: named(d, "ConfigMap")["uronode-settings"]["data"].update(
            {"uronode.toml": named(d, "ConfigMap")["uronode-settings"]["data"]["uronode.toml"].replace(
                "workers = 0", "workers = 1")}
        ),
        "hand every job to the workers",
    ),
    "node command": (lambda d: first_container(d, NODE).update({"args": ["uronode", "serve", "--workers", "2"]}),
                     "not uronode serve"),
    "two nodes": (lambda d: deployment(d, NODE)["spec"].update({"replicas": 2}), "one replica"),
    "broker host": (
        lambda d: env_var(d, WORKER, "URONODE_QUEUE__BROKER_URL").update(
            {"value": "redis://:$(REDIS_PASSWORD)@redis:6379/0"}
        ),
        "not the node's",
    ),
    "node url": (
        lambda d: first_container(d, WORKER)["args"].__setitem__(3, "http://uronode:11112"),
        "names no Service port",
    ),
    "worker flags": (lambda d: first_container(d, WORKER)["args"].append("--threads"), "uronode refuses"),
    "token file": (
        lambda d: first_container(d, WORKER)["args"].__setitem__(5, "/run/secrets/token"),
        "is no file of a Secret",
    ),
    "tokens file": (
        lambda d: named(d, "ConfigMap")["uronode-settings"]["data"].update(
            {"uronode.toml": named(d, "ConfigMap")["uronode-settings"]["data"]["uronode.toml"].replace(
                "/run/secrets/uronode/worker-tokens", "/var/lib/uronode/worker-tokens")}
        ),
        "no file of a Secret mounted in it",
    ),
    "token unknown to the node": (
        lambda d: named(d, "Secret")["uronode-worker"].update({"stringData": {"token": "another"}, "data": {}}),
        "does not hold the SHA-256",
    ),
    "redis password": (
        lambda d: first_container(d, REDIS).update(
            {"args": [a.replace('--requirepass "$REDIS_PASSWORD"', "") for a in first_container(d, REDIS)["args"]]}
        ),
        "must require the password",
    ),
}


@pytest.mark.parametrize("case", sorted(STRUCTURE_BREAKS))
def test_a_broken_manifest_is_caught(rendered: list[Doc], case: str) -> None:
    where, expected = STRUCTURE_BREAKS[case]
    problems = structure_problems(broken(rendered, where))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("case", sorted(NODE_BREAKS))
def test_a_node_miswired_is_caught(
    rendered: list[Doc], case: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    where, expected = NODE_BREAKS[case]
    problems = node_problems(broken(rendered, where), monkeypatch, tmp_path)
    assert any(expected in p for p in problems), problems

