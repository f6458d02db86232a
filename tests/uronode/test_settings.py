import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from uronode.app.node import model_missing
from uronode.settings import OHIF_VERSION, CallerRule, ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("URONODE_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = load_settings()
    assert s.scp.ae_title == "URONODE"
    assert s.scp.port == 11112
    assert s.dicomweb.port == 8080
    assert s.scp.completion_grace_s == 2.0
    assert s.scp.completion_quiet_s == 30.0
    assert s.storage.fsync is True
    assert s.scp.restrict_callers is False


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URONODE_SCP__AE_TITLE", "FROMENV")
    monkeypatch.setenv("URONODE_DICOMWEB__PORT", "9090")
    monkeypatch.setenv("URONODE_SCP__ALLOWED_CALLERS", '["CT1", "PACS@10.0.0.5"]')
    s = load_settings()
    assert s.scp.ae_title == "FROMENV"
    assert s.dicomweb.port == 9090
    assert s.scp.caller_rules() == [CallerRule(ae_title="CT1"), CallerRule(ae_title="PACS", host="10.0.0.5")]


def test_the_queue_is_the_node_s_own_unless_told_and_its_broker_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_settings(overrides={"storage": {"data_dir": str(tmp_path)}})
    assert (s.queue.backend, s.inference.workers) == ("sqlite", 1)
    assert s.queue.tokens_file(s.storage.data_dir) == tmp_path / "worker-tokens"
    monkeypatch.setenv("URONODE_QUEUE__BACKEND", "dramatiq")
    monkeypatch.setenv("URONODE_QUEUE__BROKER_URL", "unix:///run/redis/redis.sock?db=2")
    monkeypatch.setenv("URONODE_QUEUE__WORKER_TOKENS_FILE", str(tmp_path / "tokens"))
    monkeypatch.setenv("URONODE_INFERENCE__WORKERS", "0")
    s = load_settings()
    assert (s.queue.backend, s.queue.broker_url) == ("dramatiq", "unix:///run/redis/redis.sock?db=2")
    assert s.queue.tokens_file(s.storage.data_dir) == tmp_path / "tokens"
    assert s.inference.workers == 0


def test_precedence_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "uronode.toml"
    config.write_text('host = "127.0.0.1"\n[scp]\nae_title = "FROMFILE"\nport = 2000\n[storage]\ndata_dir = "/srv/x"\n')
    s = load_settings(config)
    assert (s.scp.ae_title, s.scp.port, str(s.storage.data_dir), s.host) == ("FROMFILE", 2000, "/srv/x", "127.0.0.1")
    monkeypatch.setenv("URONODE_SCP__PORT", "3000")
    s = load_settings(config)
    assert (s.scp.ae_title, s.scp.port) == ("FROMFILE", 3000)
    s = load_settings(config, {"scp": {"port": 4000}})
    assert (s.scp.ae_title, s.scp.port) == ("FROMFILE", 4000)


def test_ae_title_over_16_characters_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"scp.ae_title.*17 characters long; the limit is 16"):
        load_settings(overrides={"scp": {"ae_title": "A" * 17}})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scp": {"ae_title": "BAD\\AE"}}, "backslash"),
        ({"scp": {"port": 70000}}, "scp.port"),
        ({"scp": {"restrict_callers": True}}, "allowed_callers is empty"),
        ({"scp": {"allowed_callers": ["WAYTOOLONGCALLINGAE"]}}, "limit is 16"),
        ({"scp": {"completion_grace_s": 10, "completion_quiet_s": 5}}, "completion_quiet_s"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"queue": {"backend": "celery"}}, "queue.backend"),
        ({"queue": {"broker_url": "amqp://rabbit"}}, "queue.broker_url.*neither"),
        ({"queue": {"lease_s": 0}}, "queue.lease_s"),
        ({"nonsense": 1}, "nonsense"),
        ({"storage": {"retention_days": 0}}, "storage.retention_days"),
        ({"storage": {"retention_days": float("inf")}}, r"storage.retention_days \(the command line\): Input should be a finite number"),
    ],
)
def test_invalid_values_are_named(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides=overrides)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[scp]\nport = [\n", r"is not valid TOML: Invalid value \(at end of document\)"),
        (b"[scp]\nport = 104\n[scp]\nae_title = 'X'\n", r"is not valid TOML: Cannot declare \('scp',\) twice"),
        ('[scp]\nport = 104\n'.encode("utf-16"), r"is not UTF-8 text \(TOML is\): 'utf-8' codec can't decode"),
    ],
    ids=["syntax", "table twice", "utf-16"],
)
def test_a_config_file_that_is_not_utf8_toml_is_named_with_the_parser_s_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, message: str
) -> None:
    config = tmp_path / "uronode.toml"
    config.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(config))} {message}"):
        load_settings(config)
    monkeypatch.setenv("URONODE_CONFIG", str(config))
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(config))} \(URONODE_CONFIG\) {message}"):
        load_settings(overrides={"scp": {"port": 104}})


def test_a_folder_as_config_file_is_called_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(tmp_path))} is a folder, not a file$"):
        load_settings(tmp_path)
    monkeypatch.setenv("URONODE_CONFIG", str(tmp_path))
    with pytest.raises(ConfigError, match=r"\(URONODE_CONFIG\) is a folder, not a file$"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("URONODE_SCP", "{bad"), ("URONODE_DICOMWEB__TOKENS", "[bad"), ("URONODE_DELIVERY", "x")],
)
def test_a_group_or_list_in_the_environment_that_is_not_json_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=rf"^the environment variable {variable} is not valid JSON: Expecting"):
        load_settings()


def test_loading_a_config_file_leaves_the_environment_alone(tmp_path: Path) -> None:
    """load_settings(FILE) used to set URONODE_CONFIG for the whole process: every later
    load_settings() read that file (or failed once it was deleted), so test order mattered."""
    import os

    config = tmp_path / "uronode.toml"
    config.write_text('[scp]\nae_title = "FROMFILE"\n')
    before = dict(os.environ)
    loaded = load_settings(config)
    assert loaded.scp.ae_title == "FROMFILE" and type(loaded) is Settings
    assert dict(os.environ) == before
    assert load_settings().scp.ae_title == "URONODE"


def test_config_file_named_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "uronode.toml"
    config.write_text('[scp]\nae_title = "FROMFILE"\n')
    monkeypatch.setenv("URONODE_CONFIG", str(config))
    assert load_settings().scp.ae_title == "FROMFILE"
    assert load_settings(overrides={"scp": {"port": 104}}).scp.ae_title == "FROMFILE"
    monkeypatch.setenv("URONODE_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"\(URONODE_CONFIG\) does not exist"):
        load_settings()


def test_models_and_viewer_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a checkout, the checkout's folders; the environment names others (the image does)."""
    s = load_settings()
    assert s.inference.models_dir == ROOT / "models"
    assert s.dicomweb.viewer_dir == ROOT / ".ohif" / OHIF_VERSION / "dist"
    assert model_missing(s) is None
    monkeypatch.setenv("URONODE_INFERENCE__MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("URONODE_DICOMWEB__VIEWER_DIR", str(tmp_path / "ohif"))
    s = load_settings()
    assert (s.inference.models_dir, s.dicomweb.viewer_dir) == (tmp_path / "models", tmp_path / "ohif")
    # the node looks for its model there, and only there
    assert model_missing(s) == f"model 'default' not found under {tmp_path / 'models'}"
    (tmp_path / "models" / "default").mkdir(parents=True)
    (tmp_path / "models" / "default" / "card.json").write_text("{}")
    assert model_missing(s) is None


def test_serve_refuses_to_start_with_a_long_ae_title(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "uronode", "serve", "--data-dir", str(tmp_path), "--ae-title", "A_TITLE_OF_17_CHR"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "17 characters long; the limit is 16" in done.stderr
    assert not (tmp_path / "index.sqlite3").exists()


def test_config_command_prints_effective_settings(tmp_path: Path) -> None:
    import json

    done = subprocess.run(
        [sys.executable, "-m", "uronode", "config", "--dicom-port", "104", "--ae-title", "NODE1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["scp"]["port"] == 104
    assert printed["scp"]["ae_title"] == "NODE1"


def test_worker_token_command_writes_the_token_for_the_worker_and_its_hash_for_the_node(tmp_path: Path) -> None:
    from uronode.claims import WorkerTokens

    env = {k: v for k, v in os.environ.items() if not k.startswith("URONODE_")}
    done = subprocess.run(
        [sys.executable, "-m", "uronode", "worker-token", "gpu-1", "--out", str(tmp_path / "token"),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 0, done.stderr
    token = (tmp_path / "token").read_text().strip()
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    assert token not in (tmp_path / "data" / "worker-tokens").read_text()
    assert WorkerTokens(tmp_path / "data" / "worker-tokens").worker(token) == "gpu-1"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    refused = subprocess.run(
        [sys.executable, "-m", "uronode", "worker", "--node", "http://127.0.0.1:9", "--token-file", str(empty)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert refused.returncode == 2 and "empty" in refused.stderr


def test_delivery_gives_up_by_time_and_its_scu_timeouts_are_settings() -> None:
    """probe9 findings 3 and 4: fixed 30 s SCU timeouts; 8 tries (about 10.5 minutes) before a dead letter."""
    import pydantic

    from uronode.settings import DeliverySettings

    defaults = DeliverySettings()
    assert (defaults.retry_for_s, defaults.max_attempts) == (86400.0, None)
    assert (defaults.connect_timeout_s, defaults.acse_timeout_s, defaults.dimse_timeout_s) == (10.0, 30.0, 120.0)
    assert DeliverySettings(max_attempts=8).max_attempts == 8  # an existing configuration still reads
    for bad in ({"retry_for_s": 0}, {"dimse_timeout_s": 0}, {"backoff_s": 60, "backoff_max_s": 10},
                {"max_attempts": 0}):
        try:
            DeliverySettings.model_validate(bad)
        except pydantic.ValidationError as exc:
            assert "delivery" in str(exc) or next(iter(bad)) in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")
