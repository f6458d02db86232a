"""The admin commands keep secrets to themselves (probe13, findings 5, 7 and 8).

``uronode worker-token`` run where no node's data is (the default ``uronode-data`` is relative to where the
command runs) made a folder of its own, added the hash to a tokens file no node reads and exited 0: the
worker was then refused (401). Now it refuses, naming the folder. The tokens file was mode 644 although the
operations guide says 600: now it is created 600, and one found looser is tightened when a line is added.
``uronode config`` printed the HTTP password, the bearer tokens and the Redis password: now they are masked
unless ``--show-secrets`` asks for them.

In process, ``main([...])`` as the console script runs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from uronode.app.cli import MASK, main, without_secrets
from uronode.claims import WorkerTokens, hash_token
from uronode.store import Store


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.upper().startswith("URONODE_"):
            monkeypatch.delenv(key)
    old = os.umask(0o022)  # the usual umask, under which the tokens file came out 644
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_worker_token_where_no_node_is_refuses_and_makes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the probe ran it: from a folder that is not the node's, without --data-dir."""
    monkeypatch.chdir(tmp_path)
    assert main(["worker-token", "gpu-1", "--out", "gpu-1.token"]) == 2
    err = capsys.readouterr().err
    assert f"no node data in {tmp_path / 'uronode-data'}" in err and "--data-dir" in err
    assert list(tmp_path.iterdir()) == []  # no data folder, no tokens file, no token


def test_worker_token_from_the_node_s_folder_writes_a_tokens_file_of_mode_600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Store(tmp_path / "uronode-data")  # the node's folder, where ./run serve keeps it
    assert main(["worker-token", "gpu-1", "--out", "gpu-1.token"]) == 0
    tokens = tmp_path / "uronode-data" / "worker-tokens"
    assert mode(tokens) == 0o600 and mode(tmp_path / "gpu-1.token") == 0o600
    assert WorkerTokens(tokens).worker((tmp_path / "gpu-1.token").read_text().strip()) == "gpu-1"
    assert "note:" not in capsys.readouterr().err


def test_an_existing_tokens_file_others_could_read_is_tightened_its_lines_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Store(data)
    tokens = data / "worker-tokens"
    tokens.write_text("# made by hand\nold-worker " + "ab" * 32 + "\n")
    tokens.chmod(0o644)
    assert main(["worker-token", "gpu-2", "--out", str(tmp_path / "gpu-2.token"), "--data-dir", str(data)]) == 0
    assert mode(tokens) == 0o600
    lines = tokens.read_text().splitlines()
    assert lines[:2] == ["# made by hand", "old-worker " + "ab" * 32] and lines[2].startswith("gpu-2 ")


def test_a_named_tokens_file_or_data_folder_needs_no_node_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented first set-ups: Kubernetes' secret made on the admin's machine (the tokens file named), the
    compose volume before the node's first start (the data folder named, by the image's environment)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("URONODE_QUEUE__WORKER_TOKENS_FILE", "worker-tokens")
    assert main(["worker-token", "cluster-workers", "--out", "worker-token"]) == 0
    assert mode(tmp_path / "worker-tokens") == 0o600
    assert not (tmp_path / "uronode-data").exists()
    monkeypatch.delenv("URONODE_QUEUE__WORKER_TOKENS_FILE")
    volume = tmp_path / "volume"
    volume.mkdir()
    monkeypatch.setenv("URONODE_STORAGE__DATA_DIR", str(volume))
    capsys.readouterr()
    assert main(["worker-token", "compose-workers", "--out", "compose-token"]) == 0
    assert mode(volume / "worker-tokens") == 0o600
    assert f"{volume} holds no node's data yet" in capsys.readouterr().err


SECRETS = {
    "URONODE_DICOMWEB__PASSWORD": "s3cret-http",
    "URONODE_DICOMWEB__TOKENS": '["bearer-one", "bearer-two"]',
    "URONODE_QUEUE__BROKER_URL": "redis://:redis-pw@redis:6379/0",
    "URONODE_DELIVERY__DESTINATIONS": json.dumps([
        {"name": "pacs", "kind": "dicomweb", "url": "https://pacs.example/dicom-web?access_token=url-pw&x=1",
         "username": "stow", "password": "dest-pw"},
        {"name": "cloud", "kind": "dicomweb", "url": "https://cloud.example/dicom-web", "token": "dest-token"},
    ]),
}


def test_config_masks_every_secret_and_keeps_whether_it_is_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for secret in ("s3cret-http", "bearer-one", "bearer-two", "redis-pw", "url-pw", "dest-pw", "dest-token"):
        assert secret not in out, secret
    shown = json.loads(out)
    assert shown["dicomweb"]["password"] == MASK and shown["dicomweb"]["tokens"] == [MASK, MASK]
    assert shown["queue"]["broker_url"] == f"redis://:{MASK}@redis:6379/0"
    pacs, cloud = shown["delivery"]["destinations"]
    assert pacs["url"] == f"https://pacs.example/dicom-web?access_token={MASK}&x=1" and pacs["username"] == "stow"
    assert pacs["password"] == MASK and pacs["token"] is None
    assert cloud["token"] == MASK and cloud["password"] is None and cloud["url"] == "https://cloud.example/dicom-web"

    assert main(["config", "--show-secrets"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["dicomweb"]["password"] == "s3cret-http" and shown["dicomweb"]["tokens"] == ["bearer-one", "bearer-two"]
    assert shown["queue"]["broker_url"] == SECRETS["URONODE_QUEUE__BROKER_URL"]


def test_config_without_secrets_shows_them_unset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["dicomweb"]["password"] is None and shown["dicomweb"]["tokens"] == []
    assert shown["queue"]["broker_url"] == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://:pw@h:6379/0", f"redis://:{MASK}@h:6379/0"),
    ("rediss://user:p@ss@h:6380/1", f"rediss://user:{MASK}@h:6380/1"),
    ("https://a-token@h/x", f"https://{MASK}@h/x"),
    ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=0"),
    ("https://h/path@not-userinfo", "https://h/path@not-userinfo"),
    ("https://h/x?apiKey=k1&study=1&Secret=&token=t#f", f"https://h/x?apiKey={MASK}&study=1&Secret={MASK}&token={MASK}#f"),
    # review 52: signed URLs, an encoded name, ';' between parameters, a fragment's token; a path left alone
    ("https://s3/b?X-Amz-Credential=c&X-Amz-Signature=s&sig=1&api%4Bey=k;auth=a&region=eu#access_token=t",
     f"https://s3/b?X-Amz-Credential={MASK}&X-Amz-Signature={MASK}&sig={MASK}&api%4Bey={MASK};auth={MASK}&region=eu"
     f"#access_token={MASK}"),
    ("https://h/a&token=path/x", "https://h/a&token=path/x"),
    ("uronode-data", "uronode-data"),
])
def test_a_url_keeps_all_but_its_password(url: str, masked: str) -> None:
    assert without_secrets({"queue": {"broker_url": url}}) == {"queue": {"broker_url": masked}}


def test_a_name_twice_or_the_node_s_own_is_refused_and_a_tab_separated_line_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Probe 20: a second token under one name left the first valid, unseen; 'local' merged a remote worker's
    figures with the node's own; a line written with a tab was ignored without a word."""
    data = tmp_path / "data"
    Store(data)
    tokens = data / "worker-tokens"
    assert main(["worker-token", "gpu-1", "--out", str(tmp_path / "a.token"), "--data-dir", str(data)]) == 0
    before = tokens.read_text()
    assert main(["worker-token", "gpu-1", "--out", str(tmp_path / "b.token"), "--data-dir", str(data)]) == 2
    assert "has a token already" in capsys.readouterr().err
    assert tokens.read_text() == before and not (tmp_path / "b.token").exists()
    for reserved in ("local", "local:12"):
        assert main(["worker-token", reserved, "--out", str(tmp_path / "c.token"), "--data-dir", str(data)]) == 2
        assert "names the node's own workers" in capsys.readouterr().err
    with tokens.open("a") as f:
        f.write("tabbed\t" + hash_token("tab-token") + "\n" + "broken not-a-hash\n")
    with caplog.at_level("WARNING"):
        known = WorkerTokens(tokens)
        assert known.worker("tab-token") == "tabbed"
        assert known.worker((tmp_path / "a.token").read_text().strip()) == "gpu-1"
    assert [r.getMessage() for r in caplog.records if "is not 'NAME SHA256'" in r.getMessage()] == [
        f"{tokens} line 3 is not 'NAME SHA256' (the SHA-256 of the token, 64 hex digits): ignored"]
