"""The deployment files: the compose file validates offline and agrees with the node's defaults."""

import json
import subprocess
from pathlib import Path

import yaml

from tests.peers.processes import require
from uronode.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_is_valid() -> None:
    done = subprocess.run(
        [require("docker-compose"), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert set(config["services"]) == {"uronode", "orthanc", "nginx"}
    for name, target in (("uronode", "/var/lib/uronode"), ("orthanc", "/var/lib/orthanc/db")):
        volumes = config["services"][name]["volumes"]
        assert any(str(v).split(":")[:2] == [f"{name}-data", target] for v in volumes), f"{name} keeps no state"


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
    assert orthanc["DicomAet"] in allowed
    settings = load_settings(overrides={"scp": {"restrict_callers": True, "allowed_callers": allowed}})
    assert settings.scp.restrict_callers


def test_image_sets_its_paths_and_fetches_the_viewer_the_node_expects() -> None:
    import re

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
