"""The deployment files: the compose files validate offline and agree with the node's settings.

docker-compose.yml is the plain deployment (the node's own worker, no broker); docker-compose.distributed.yml
adds Redis and workers that `--scale worker=N` multiplies. Both are checked with `docker-compose config` (no
engine needed), and the override's commands are run as their containers would run them, with the programs
they exec replaced by a recorder, so that what the node, Redis and the workers get is checked, not the text.
"""

import copy
import json
import os
import re
import secrets as secrets_module
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.peers.processes import free_port, port_open, require, wait_until
from tests.test_readme import leaves
from uronode.settings import CallerRule, ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


COMPOSE_ENV = {"ORTHANC_ADMIN_PASSWORD": "from-the-env-file"}
"""What an administrator's ``.env`` beside the compose file gives it."""


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {name: value for name, value in os.environ.items() if name not in COMPOSE_ENV}
    return subprocess.run([require("docker-compose"), *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=environ | (COMPOSE_ENV if env is None else env))


def test_compose_file_is_valid() -> None:
    done = compose("-f", str(ROOT / "docker-compose.yml"), "config")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert set(config["services"]) == {"uronode", "orthanc", "nginx"}
    for name, target in (("uronode", "/var/lib/uronode"), ("orthanc", "/var/lib/orthanc/db")):
        volumes = config["services"][name]["volumes"]
        assert any(str(v).split(":")[:2] == [f"{name}-data", target] for v in volumes), f"{name} keeps no state"
    for name, service in config["services"].items():  # probe 51: Docker's json-file logs grew for ever
        assert service["logging"]["options"]["max-size"] and service["logging"]["options"]["max-file"], name


def test_orthanc_s_password_is_the_administrator_s_and_its_api_stays_on_the_host() -> None:
    """Probe 55: a committed "change-me" opened Orthanc's REST API (which deletes) on every interface."""
    orthanc = yaml.safe_load(compose("-f", str(ROOT / "docker-compose.yml"), "config").stdout)["services"]["orthanc"]
    assert orthanc["environment"]["ORTHANC_ADMIN_PASSWORD"] == "from-the-env-file"
    # compose writes a port with an address as its short form, one without as target and published
    published = [port if isinstance(port, str) else f"{port['published']}:{port['target']}" for port in orthanc["ports"]]
    assert [port for port in published if "8042" in port] == ["127.0.0.1:8042:8042/tcp"], published
    unset = compose("-f", str(ROOT / "docker-compose.yml"), "config", env={})
    assert unset.returncode != 0 and "set ORTHANC_ADMIN_PASSWORD, Orthanc's admin password" in unset.stderr


def test_the_shipped_orthanc_config_takes_its_admin_password_from_the_variable(tmp_path: Path) -> None:
    """orthanc/orthanc.json in the real Orthanc (its paths moved into the test's folder): the variable's password
    lets the admin in, the old committed one and none do not."""
    config = json.loads((ROOT / "orthanc" / "orthanc.json").read_text())
    http, dicom = free_port(), free_port()
    config.update(StorageDirectory=str(tmp_path / "db"), IndexDirectory=str(tmp_path / "db"), HttpPort=http,
                  DicomPort=dicom, LuaScripts=[])
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    orthanc = subprocess.Popen([require("Orthanc"), f"--logfile={tmp_path / 'orthanc.log'}", str(tmp_path / "orthanc.json")],
                               env={**os.environ, "ORTHANC_ADMIN_PASSWORD": "s3cret-from-env"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def status(password: str) -> int:
            try:
                return httpx.get(f"http://127.0.0.1:{http}/system", auth=("admin", password), timeout=5).status_code
            except httpx.TransportError:
                return 0

        wait_until(lambda: status("") != 0, 30, "Orthanc's HTTP server")
        assert [status(p) for p in ("s3cret-from-env", "change-me", "")] == [200, 401, 401]
    finally:
        orthanc.terminate()
        orthanc.wait(30)


class _Names:
    """A DNS server on Docker's address (127.0.0.11:53, on the test's own loopback) that answers A queries for
    ``uronode`` with the address in ``self.address``; other names get NXDOMAIN."""

    def __init__(self, address: str) -> None:
        self.address, self.asked = address, 0
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.11", 53))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                query, client = self.socket.recvfrom(512)
            except OSError:
                return
            labels, at = [], 12
            while query[at]:
                labels.append(query[at + 1:at + 1 + query[at]].decode())
                at += 1 + query[at]
            question = query[12:at + 5]
            known = ".".join(labels).lower() == "uronode" and query[at + 1:at + 3] == b"\x00\x01"
            self.asked += 1
            answer = (b"\xc0\x0c\x00\x01\x00\x01" + (10).to_bytes(4, "big") + b"\x00\x04"
                      + socket.inet_aton(self.address)) if known else b""
            flags = b"\x81\x80" if known else b"\x81\x83"
            self.socket.sendto(query[:2] + flags + b"\x00\x01" + (b"\x00\x01" if known else b"\x00\x00")
                               + b"\x00\x00\x00\x00" + question + answer, client)


def test_nginx_passes_requests_to_the_node_found_by_name_as_they_come(tmp_path: Path) -> None:
    """deploy/nginx.conf in the real nginx (its server block included as the image includes it), in front of an
    HTTP server on the node's port, found through Docker's DNS address: a request reaches the node as the
    browser sent it (encoded and doubled slashes, a query), with the headers the node reads; the node's address
    is looked up as requests come (again after 10 s), not once at nginx's start (probe 55: a node container
    made anew was 502 until nginx was reloaded)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    site = ROOT / "deploy" / "nginx.conf"
    assert not re.search(r"proxy_pass http://", site.read_text())
    seen: list[dict[str, str]] = []

    class Node(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append({"line": self.requestline, **{k.lower(): v for k, v in self.headers.items()}})
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    node = ThreadingHTTPServer(("127.0.0.1", 8080), Node)
    threading.Thread(target=node.serve_forever, daemon=True).start()
    names = _Names("127.0.0.1")
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\ndaemon off;\nevents {{}}\n"
                    f"http {{ access_log off; client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path};"
                    f" include {site}; }}\n")
    nginx = subprocess.Popen([require("nginx"), "-c", str(main)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: nginx.poll() is not None or port_open(80), 30, "nginx to listen")
        assert nginx.poll() is None, nginx.stderr.read() if nginx.stderr else b""
        assert names.asked == 0  # nothing looked up at nginx's start ...
        path = "/dicom-web/studies/1.2.3/series//x%2Fy?includefield=00100010&limit=2"
        answer = httpx.get(f"http://127.0.0.1{path}", headers={"Host": "viewer.example", "X-Forwarded-User": "mallory"},
                           timeout=10)
        assert answer.status_code == 200 and names.asked >= 1  # ... but at the request, where the node is now
        (request,) = seen
        assert request["line"] == f"GET {path} HTTP/1.1" and request["host"] == "viewer.example"
        assert request["x-forwarded-for"] == "127.0.0.1" and request["x-forwarded-proto"] == "http"
        assert "x-forwarded-user" not in request  # a client's own is dropped: the audit log would believe it
    finally:
        nginx.terminate()
        nginx.wait(30)
        node.shutdown()
        node.server_close()
        names.socket.close()


def test_orthanc_config_registers_the_node_with_its_defaults() -> None:
    defaults = load_settings()
    config = json.loads((ROOT / "orthanc" / "orthanc.json").read_text())
    ae, host, port = config["DicomModalities"]["URONODE"]
    assert ae == defaults.scp.ae_title and port == defaults.scp.port and host == "uronode"
    assert config["DicomWeb"]["StudiesMetadata"] == "Full" and config["DicomWeb"]["SeriesMetadata"] == "Full"


def test_compose_lets_orthanc_call_the_node() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["uronode"]["environment"]
    orthanc = json.loads((ROOT / "orthanc" / "orthanc.json").read_text())
    allowed = json.loads(env["URONODE_SCP__ALLOWED_CALLERS"])
    # Orthanc's AE title, from Orthanc's service alone (probe 54: any caller naming itself ORTHANC was let in)
    assert CallerRule.parse(allowed[0]) == CallerRule(ae_title=orthanc["DicomAet"], host="orthanc")
    assert "orthanc" in compose["services"]
    settings = load_settings(overrides={"scp": {"restrict_callers": True, "allowed_callers": allowed}})
    assert settings.scp.restrict_callers


def test_image_sets_its_paths_and_fetches_the_viewer_the_node_expects() -> None:

    from uronode.settings import OHIF_VERSION

    dockerfile = (ROOT / "Dockerfile").read_text()
    run = (ROOT / "run").read_text()
    for name in ("OHIF_VERSION", "OHIF_SHA256"):
        (in_image,) = re.findall(rf"^ARG {name}=(\S+)$", dockerfile, re.M)
        (in_run,) = re.findall(rf"^{name}=(\S+)$", run, re.M)
        assert in_image == in_run, name
    assert re.search(rf"^ARG OHIF_VERSION={re.escape(OHIF_VERSION)}$", dockerfile, re.M)
    for variable in ("URONODE_INFERENCE__MODELS_DIR", "URONODE_DICOMWEB__VIEWER_DIR"):
        assert re.search(rf"^\s+{variable}=/\S+", dockerfile, re.M), variable
    # An init that reaps is PID 1, whatever command compose or Kubernetes gives (probe 24 #5).
    assert re.search(r"apt-get install [^\n]*\btini\b", dockerfile)
    assert re.findall(r"^ENTRYPOINT (.*)$", dockerfile, re.M) == ['["/usr/bin/tini", "--"]']
    # The one image runs the node with either backend, and the workers: it installs the distributed extra.
    assert re.search(r"pip install [^\n]*'\.\[distributed\]'", dockerfile)
    import tomllib

    assert "distributed" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # probe 55: without it `build .` sent the daemon the virtual environment and a default data folder (patients)
    ignored = {line for line in (ROOT / ".dockerignore").read_text().splitlines() if not line.startswith("#")}
    assert {".git", ".venv", ".ohif", "uronode-data", "deploy/secrets", ".env"} <= ignored


# The distributed override: Redis, the node handing its jobs to it, workers that --scale multiplies.

DISTRIBUTED = ROOT / "docker-compose.distributed.yml"
SETTING_NAMES = {"URONODE_" + name.upper().replace(".", "__") for name in leaves(Settings)}


def compose_config(*files: Path) -> dict[str, Any]:
    done = compose(*(arg for f in files for arg in ("-f", str(f))), "config")
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def started(service: dict[str, Any], secrets: Path, tmp_path: Path) -> tuple[dict[str, str], list[str]]:
    """Run the service's command as its container would, with /run/secrets/ from `secrets` and the program it
    execs replaced by one that records its environment and arguments: (URONODE_ environment, argv)."""
    command = service.get("command") or []
    record = tmp_path / "started.json"
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for program in ("uronode", "redis-server"):
        stub = stubs / program
        stub.write_text(
            f"#!{sys.executable} -IS\nimport json, os, sys\n"
            f"json.dump({{'env': {{k: v for k, v in os.environ.items() if k.startswith('URONODE_')}},"
            f" 'argv': [os.path.basename(sys.argv[0])] + sys.argv[1:]}}, open({str(record)!r}, 'w'))\n"
        )
        stub.chmod(0o755)
    script = [str(part).replace("$$", "$").replace("/run/secrets/", f"{secrets}/") for part in command]
    environment = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    env = {"PATH": f"{stubs}:/usr/bin:/bin"} | environment
    record.unlink(missing_ok=True)
    subprocess.run(script, env=env, check=True, timeout=30)
    seen = json.loads(record.read_text())
    argv = [a.replace(f"{secrets}/", "/run/secrets/") for a in seen["argv"]]
    return seen["env"], argv


def cli_accepts(argv: list[str]) -> bool:
    """Whether `uronode`'s own argument parser takes this command line (argv[0] is the program)."""
    import contextlib
    import io

    from uronode.app.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(argv[1:])
    except SystemExit:
        return False
    return argv[0] == "uronode"


def test_the_documented_worker_token_commands_are_ones_uronode_takes() -> None:
    """The compose override and the kustomization tell how to make a worker's token; uronode takes the line."""
    for document in (DISTRIBUTED, ROOT / "deploy" / "kubernetes" / "kustomization.yaml"):
        lines = [line for line in document.read_text().splitlines() if "uronode worker-token" in line]
        assert lines, document
        for line in lines:
            argv = shlex.split(line.split("uronode worker-token", 1)[1].split("#", 1)[0])
            assert cli_accepts(["uronode", "worker-token", *argv]), line


def distributed_problems(config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    problems: list[str] = []
    services = config["services"]
    if not {"uronode", "redis", "worker"} <= set(services):
        return [f"services {sorted(services)}: want uronode, redis and worker"]
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    password = secrets_module.token_hex(32)
    (secrets / "redis-password").write_text(password)
    (secrets / "worker-token").write_text(secrets_module.token_hex(32) + "\n")

    for name, service in services.items():
        for variable in service.get("environment") or {}:
            if variable.startswith("URONODE_") and variable not in SETTING_NAMES | {"URONODE_CONFIG"}:
                problems.append(f"{name}: {variable} is no setting the node reads")
        for secret in service.get("secrets") or []:
            source = secret["source"] if isinstance(secret, dict) else secret
            file = (config.get("secrets") or {}).get(source, {}).get("file", "")
            if not str(file).startswith(str(ROOT / "deploy" / "secrets") + "/"):
                problems.append(f"{name}: secret {source} is not a file under deploy/secrets/")
    node_env, node_argv = started(services["uronode"], secrets, tmp_path)
    worker_env, worker_argv = started(services["worker"], secrets, tmp_path)
    _, redis_argv = started(services["redis"], secrets, tmp_path)

    for variable in SETTING_NAMES | {"URONODE_CONFIG"}:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in node_env.items():
        monkeypatch.setenv(variable, value)
    try:
        settings = load_settings()
    except ConfigError as error:
        return problems + [f"the node would not start: {error}"]
    if node_argv != ["uronode", "serve"]:
        problems.append(f"the node runs {node_argv}")
    if settings.queue.backend != "dramatiq" or settings.inference.workers != 0:
        problems.append("the node must hand every job to the workers (queue.backend dramatiq, inference.workers 0)")
    broker = urlsplit(settings.queue.broker_url)
    if worker_env.get("URONODE_QUEUE__BROKER_URL") != settings.queue.broker_url:
        problems.append("the workers' broker URL is not the node's")
    redis_port = redis_argv[redis_argv.index("--port") + 1] if "--port" in redis_argv else "6379"
    if broker.hostname != "redis" or str(broker.port) != redis_port:
        problems.append(f"the broker URL {settings.queue.broker_url} is not the redis service's port {redis_port}")
    if "--requirepass" not in redis_argv or redis_argv[redis_argv.index("--requirepass") + 1] != password:
        problems.append("Redis does not require the password from deploy/secrets/redis-password")
    if broker.password != password:
        problems.append("the broker URL does not carry the password from deploy/secrets/redis-password")
    if redis_argv[redis_argv.index("--save") + 1 :][:1] != [""] or "--appendonly" not in redis_argv:
        problems.append("Redis keeps something on disk; SQLite is the record, Redis needs no persistence")
    if services["redis"].get("ports") or services["redis"].get("volumes"):
        problems.append("Redis publishes a port or keeps a volume")

    if worker_argv[:2] != ["uronode", "worker"] or "--node" not in worker_argv or "--token-file" not in worker_argv:
        return problems + [f"the workers run {worker_argv}, not uronode worker --node URL --token-file FILE"]
    problems += [f"uronode refuses {argv}" for argv in (node_argv, worker_argv) if not cli_accepts(argv)]
    node_url = urlsplit(worker_argv[worker_argv.index("--node") + 1])
    if node_url.hostname != "uronode" or node_url.port != settings.dicomweb.port:
        problems.append(f"the workers' --node {node_url.geturl()} is not the node's HTTP port")
    token = Path(worker_argv[worker_argv.index("--token-file") + 1])
    worker_secrets = [s["source"] if isinstance(s, dict) else s for s in services["worker"].get("secrets") or []]
    if token.parent != Path("/run/secrets") or token.name not in worker_secrets:
        problems.append(f"the workers' --token-file {token} is not one of their secrets")
    if "container_name" in services["worker"] or services["worker"].get("ports"):
        problems.append("a worker with a container name or a published port cannot be scaled")
    return problems


@pytest.fixture(scope="module")
def distributed() -> dict[str, Any]:
    return compose_config(ROOT / "docker-compose.yml", DISTRIBUTED)


def test_compose_default_needs_no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain compose file keeps the single-machine default: the node's own worker, no Redis."""
    config = compose_config(ROOT / "docker-compose.yml")
    assert not any("redis" in str(s.get("image", "")) for s in config["services"].values())
    for variable in SETTING_NAMES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in config["services"]["uronode"]["environment"].items():
        monkeypatch.setenv(variable, str(value))
    settings = load_settings()
    assert settings.queue.backend == "sqlite" and settings.inference.workers >= 1


def test_compose_distributed_override_is_wired_as_the_node_reads_it(
    distributed: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = distributed
    assert distributed_problems(config, tmp_path, monkeypatch) == []
    # Everything the plain file has is still there, with its volumes.
    assert {"uronode", "orthanc", "nginx"} <= set(config["services"])
    assert config["services"]["uronode"]["volumes"] == compose_config(ROOT / "docker-compose.yml")["services"][
        "uronode"]["volumes"]
    for name, service in config["services"].items():  # probe 55: Redis's and the workers' logs were unbounded
        assert service["logging"]["options"]["max-size"] and service["logging"]["options"]["max-file"], name
    # probe 55: the workers write the results and dated them in UTC; they get the node's zone
    assert config["services"]["worker"]["environment"]["TZ"] == config["services"]["uronode"]["environment"]["TZ"]


def test_no_compose_secret_is_in_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "deploy/secrets"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked == ["deploy/secrets/.gitignore"]


def _set_command(service: dict[str, Any], old: str, new: str) -> None:
    service["command"] = [str(part).replace(old, new) for part in service["command"]]


COMPOSE_BREAKS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "unknown setting": (
        lambda c: c["services"]["worker"].setdefault("environment", {}).update({"URONODE_QUEUE__BACKENDS": "x"}),
        "is no setting the node reads",
    ),
    "local model": (
        lambda c: c["services"]["uronode"]["environment"].update({"URONODE_INFERENCE__WORKERS": "1"}),
        "hand every job to the workers",
    ),
    "broker host": (lambda c: _set_command(c["services"]["worker"], "@redis:", "@broker:"), "not the node's"),
    "password quoting": (
        lambda c: _set_command(c["services"]["redis"], '"$$(cat /run/secrets/redis-password)"', "redis-password"),
        "does not require the password",
    ),
    "node url": (lambda c: _set_command(c["services"]["worker"], "uronode:8080", "uronode:11112"), "HTTP port"),
    "token secret": (lambda c: c["services"]["worker"]["secrets"].pop(), "not one of their secrets"),
    "worker flags": (lambda c: _set_command(c["services"]["worker"], "--token-file", "--token-file x --threads"),
                     "uronode refuses"),
    "scaling": (lambda c: c["services"]["worker"].update({"container_name": "worker"}), "cannot be scaled"),
    "persistence": (lambda c: _set_command(c["services"]["redis"], "--appendonly no", ""), "keeps something"),
}


@pytest.mark.parametrize("case", sorted(COMPOSE_BREAKS))
def test_a_miswired_compose_override_is_caught(
    case: str, distributed: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = copy.deepcopy(distributed)
    where, expected = COMPOSE_BREAKS[case]
    where(config)
    problems = distributed_problems(config, tmp_path, monkeypatch)
    assert any(expected in p for p in problems), problems


def redis_as_configured(argv: list[str], env: dict[str, str], password: str) -> dict[str, str]:
    """Start the real redis-server the way `argv` (a deployment's Redis command) starts it, on a free port
    of loopback; check it refuses a client without the password and answers one with it; return its
    configuration as it reports it (CONFIG GET)."""
    import socket

    import redis

    port = free_port()
    argv = [a.replace("--port 6379", f"--port {port} --bind 127.0.0.1") for a in argv]
    env = {"PATH": f"{Path(require('redis-server')).parent}:/usr/bin:/bin"} | env
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or _accepts(port), 15, "redis-server to listen")
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as anonymous:
            anonymous.sendall(b"PING\r\n")
            assert anonymous.recv(1024).startswith(b"-NOAUTH")
        client = redis.Redis(port=port, password=password, socket_timeout=5, decode_responses=True)
        assert client.ping()
        config: dict[str, str] = {}
        for name in ("save", "appendonly", "maxmemory-policy", "maxmemory", "port"):
            for key, value in client.config_get(name).items():
                assert key is not None and value is not None, (name, key, value)
                config[key] = value
        return config
    finally:
        process.terminate()
        process.wait(10)


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_compose_redis_runs_as_configured(distributed: dict[str, Any], tmp_path: Path) -> None:
    """The override's Redis command, run by the real redis-server: a password, nothing on disk, no eviction."""
    password = secrets_module.token_hex(32)
    (tmp_path / "redis-password").write_text(password)
    command = [
        str(part).replace("$$", "$").replace("/run/secrets/", f"{tmp_path}/")
        for part in distributed["services"]["redis"]["command"]
    ]
    config = redis_as_configured(command, {}, password)
    assert config["save"] == "" and config["appendonly"] == "no"
    assert config["maxmemory-policy"] == "noeviction" and int(config["maxmemory"]) > 0


def test_no_deployment_replaces_the_image_s_init() -> None:
    """Compose's ``command`` and Kubernetes' ``args`` replace CMD and keep tini; an ``entrypoint`` (compose) or a
    ``command`` (Kubernetes) would drop it."""
    services = compose_config(ROOT / "docker-compose.yml", DISTRIBUTED)["services"]
    ours = [name for name, service in services.items() if service.get("image") == "uronode:latest"]
    assert sorted(ours) == ["uronode", "worker"]
    assert not [name for name in ours if "entrypoint" in services[name]]
    containers = [container for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
                  for document in yaml.safe_load_all(path.read_text()) if document
                  for container in document.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
                  if container.get("image", "").startswith("uronode")]
    assert len(containers) >= 2
    assert not [container["name"] for container in containers if "command" in container]

