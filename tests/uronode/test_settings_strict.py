"""A setting the node does not have is refused, wherever it is written, with the name meant when one is
close; caller hosts and trusted proxies are checked for what they are (probe7, findings 3, 4 and 9).

Before: only a misspelled top-level TOML table was refused; ``[scp] restrict_caller = true``,
``URONODE_SCP__RESTRICT_CALLER=true`` or a destination's ``"result"`` left the node running on the
default (open to every caller, sending every result)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from uronode.app.cli import main
from uronode.settings import OTHER_VARIABLES, CallerRule, ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
PACS = {"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "pacs", "port": 104}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("URONODE_"):
            monkeypatch.delenv(key)


def refusal(**kwargs: Any) -> str:
    with pytest.raises(ConfigError) as refused:
        load_settings(**kwargs)
    return str(refused.value)


def nested_models(model: type[BaseModel]) -> set[type[BaseModel]]:
    """Every model the settings hold, in groups, lists (destinations) and dicts (known AEs)."""
    found: set[type[BaseModel]] = set()
    for field in model.model_fields.values():
        stack: list[Any] = [field.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                if annotation not in found:
                    found.add(annotation)
                    found |= nested_models(annotation)
            else:
                stack.extend(get_args(annotation))
    return found


def test_every_settings_model_refuses_names_it_does_not_have() -> None:
    models = nested_models(Settings)
    assert {m.__name__ for m in models} >= {"ScpSettings", "StorageSettings", "DicomwebSettings", "InferenceSettings",
                                            "DeliverySettings", "QueueSettings", "Destination", "KnownAE"}
    checked: set[type[BaseModel]] = {*models, Settings, CallerRule}
    for model in checked:
        assert model.model_config.get("extra") == "forbid", model.__name__


def test_a_misspelled_name_in_a_config_table_is_refused_with_the_name_meant(tmp_path: Path) -> None:
    config = tmp_path / "uronode.toml"
    config.write_text('[scp]\nrestrict_caller = true\nallowed_callers = ["PACS"]\n')
    assert refusal(config_file=config) == (
        "invalid settings:\n  scp.restrict_caller: unknown setting; did you mean scp.restrict_callers?")


@pytest.mark.parametrize(("variable", "message"), [
    ("URONODE_SCP__RESTRICT_CALLER",
     "environment variable URONODE_SCP__RESTRICT_CALLER names no setting (scp has no 'restrict_caller');"
     " did you mean URONODE_SCP__RESTRICT_CALLERS?"),
    ("URONODE_STROAGE__DATA_DIR",
     "environment variable URONODE_STROAGE__DATA_DIR names no setting (the top level has no 'stroage');"
     " did you mean URONODE_STORAGE__DATA_DIR?"),
    ("URONODE_DATA_DIR",
     "environment variable URONODE_DATA_DIR names no setting (the top level has no 'data_dir');"
     " did you mean URONODE_STORAGE__DATA_DIR?"),
    ("URONODE_SCP__PORT__NUMBER", "environment variable URONODE_SCP__PORT__NUMBER names no setting"
                                  " (scp.port holds no 'number')"),
    ("URONODE_XYZZY", "environment variable URONODE_XYZZY names no setting (the top level has no 'xyzzy')"),
])
def test_an_environment_variable_that_names_no_setting_is_refused(
    variable: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "true")
    assert refusal() == message


def test_every_unknown_variable_is_named_and_the_project_s_other_variables_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "uronode.toml"
    config.write_text("")
    monkeypatch.setenv("URONODE_CONFIG", str(config))
    for variable in OTHER_VARIABLES - {"URONODE_CONFIG"}:
        monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("uronode_scp__port", "104")  # pydantic-settings reads names in any case
    assert load_settings().scp.port == 104
    monkeypatch.setenv("URONODE_HOTS", "::")
    monkeypatch.setenv("URONODE_SCP__AETITLE", "X")
    assert refusal().splitlines() == [
        "invalid settings:",
        "  environment variable URONODE_HOTS names no setting (the top level has no 'hots'); did you mean URONODE_HOST?",
        "  environment variable URONODE_SCP__AETITLE names no setting (scp has no 'aetitle');"
        " did you mean URONODE_SCP__AE_TITLE?",
    ]


def test_a_refusal_names_where_the_value_came_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Probe 53: a bad variable was named like a setting of the file (``scp.port: ...``), and the admin looked
    in the file. The flag, the variable (its own, or its group's JSON) or the file is named, in the order they
    win; a default or a check across settings names none."""
    config = tmp_path / "node.toml"
    config.write_text('log_level = "LOUD"\n[scp]\nport = "x"\n[storage]\nmax_disk_used_percent = 0.5\n')
    monkeypatch.setenv("URONODE_SCP__PORT", "abc")
    monkeypatch.setenv("URONODE_DELIVERY", '{"retry_for_s": -1}')
    with pytest.raises(ConfigError) as refused:
        load_settings(config, overrides={"scp": {"ae_title": "A\\B"}})
    assert [line.split(": ")[0].strip() for line in str(refused.value).splitlines()[1:]] == [
        "log_level (" + str(config) + ")", "scp.port (URONODE_SCP__PORT)",  # the flag's value is checked next
        "storage.max_disk_used_percent (" + str(config) + ")", "delivery.retry_for_s (URONODE_DELIVERY)"]
    # review 52: a source is named only where it holds the value; a whole group's check names none
    monkeypatch.setenv("URONODE_SCP__PORT", "1104")
    monkeypatch.setenv("URONODE_DELIVERY", '{"backoff_s": 1}')
    monkeypatch.setenv("URONODE_STORAGE__RETENTION_INTERVAL_S", "1e10")
    config.write_text('[scp]\nae_title = "A\\\\B"\n[storage]\nfsync = true\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(config, overrides={"storage": {"data_dir": str(tmp_path)}})
    assert [line.split(": ")[0].strip() for line in str(refused.value).splitlines()[1:]] == [
        f"scp.ae_title ({config})", "storage"]
    for name in ("URONODE_SCP__PORT", "URONODE_DELIVERY", "URONODE_STORAGE__RETENTION_INTERVAL_S"):
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match=r"^invalid settings:\n  settings: Value error, scp\.port and dicomweb\.port are both"):
        load_settings(overrides={"scp": {"port": 8080}})


def test_a_known_ae_given_as_its_own_variable_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URONODE_DELIVERY__KNOWN_AES__CT1", '{"host": "ct1", "port": 104}')
    delivery = load_settings().delivery
    assert delivery.known_aes["ct1"].port == 104  # the environment's names come lower-cased
    # ... and a scanner calling as CT1 is found (probe 53: it was not, and its results never went back)
    assert (known := delivery.known_ae("CT1")) is not None and known.host == "ct1" and delivery.known_ae("CT2") is None
    monkeypatch.delenv("URONODE_DELIVERY__KNOWN_AES__CT1")
    with_space = load_settings(overrides={"delivery": {"known_aes": {"CT1 ": {"host": "ct1", "port": 104}}}})
    assert with_space.delivery.known_ae("CT1") is not None
    with pytest.raises(ConfigError, match="two keys name one AE title"):
        load_settings(overrides={"delivery": {"known_aes": {"CT1": {"host": "a", "port": 104},
                                                            "ct1": {"host": "b", "port": 104}}}})
    monkeypatch.setenv("URONODE_DELIVERY__KNOWN_AES__CT1", '{"host": "ct1", "port": 104}')
    monkeypatch.setenv("URONODE_DELIVERY__KNOWN_AES__CT1", '{"hostname": "ct1", "port": 104}')
    assert "delivery.known_aes.ct1.hostname: unknown setting; did you mean delivery.known_aes.ct1.host?" in refusal()


@pytest.mark.parametrize(("extra", "message"), [
    ({"result": ["sc"]}, "delivery.destinations.0.result: unknown setting; did you mean delivery.destinations.0.results?"),
    ({"user": "a"}, "delivery.destinations.0.user: unknown setting; did you mean delivery.destinations.0.username?"),
    ({"colour": "red"}, "delivery.destinations.0.colour: unknown setting\n"),
])
def test_a_destination_with_a_name_it_does_not_have_is_refused(
    extra: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setenv("URONODE_DELIVERY__DESTINATIONS", json.dumps([{**PACS, **extra}]))
    assert message in refusal() + "\n"


def test_a_group_given_as_json_refuses_a_misspelled_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URONODE_SCP", '{"restrict_caller": true}')
    assert "scp.restrict_caller: unknown setting; did you mean scp.restrict_callers?" in refusal()


def test_the_deployments_name_only_settings() -> None:
    """The compose files, the Kubernetes manifests and the run script set no variable the node now refuses."""
    from uronode.settings import _environment_variable_problem

    texts = [p.read_text() for p in [*ROOT.glob("docker-compose*.yml"), *(ROOT / "deploy").rglob("*"), ROOT / "run"]
             if p.is_file()]
    names = {n for text in texts for n in re.findall(r"\bURONODE_[A-Z0-9_]*[A-Z0-9]\b", text)}
    assert names
    assert [p for n in sorted(names - OTHER_VARIABLES) if (p := _environment_variable_problem(n))] == []


@pytest.mark.parametrize(("entry", "rule"), [
    ("ORTHANC@orthanc", CallerRule(ae_title="ORTHANC", host="orthanc")),
    ("PACS@PACS.Example.org", CallerRule(ae_title="PACS", host="pacs.example.org")),
    ("PACS@::ffff:10.1.2.3", CallerRule(ae_title="PACS", host="10.1.2.3")),
    ("PACS@[fd00::1]", CallerRule(ae_title="PACS", host="fd00::1")),
    ("PACS@ 10.1.2.3 ", CallerRule(ae_title="PACS", host="10.1.2.3")),
])
def test_an_allowed_caller_s_host_is_an_address_or_a_host_name(entry: str, rule: CallerRule) -> None:
    settings = load_settings(overrides={"scp": {"allowed_callers": [entry]}})
    assert settings.scp.caller_rules() == [rule]


@pytest.mark.parametrize(("entry", "message"), [
    ("PACS@10.1.2", "allowed caller PACS: host '10.1.2' is neither an IP address nor a host name"),
    ("PACS@pacs host", "allowed caller PACS: host 'pacs host' is neither an IP address nor a host name"),
    ("PACS@10.1.2.0/24", "allowed caller PACS: host '10.1.2.0/24' is neither an IP address nor a host name"),
    ("PACS@", "allowed caller 'PACS@': no host after @"),
])
def test_an_allowed_caller_s_host_that_is_neither_is_refused_at_start_up(entry: str, message: str) -> None:
    assert message in refusal(overrides={"scp": {"allowed_callers": [entry]}})


def test_trusted_proxies_take_networks_as_well_as_addresses() -> None:
    entries = ["172.18.0.0/16", "10.1.2.3", "fd00::/8", "::1"]
    assert load_settings(overrides={"dicomweb": {"trusted_proxies": entries}}).dicomweb.trusted_proxies == entries


@pytest.mark.parametrize(("entry", "message"), [
    ("172.18.0.5/16", "'172.18.0.5/16' has host bits set; the network is 172.18.0.0/16"),
    ("nginx", "'nginx' is neither an IP address nor a network (such as 172.18.0.0/16)"),
    ("10.0.0.0/33", "'10.0.0.0/33' is neither an IP address nor a network"),
])
def test_a_trusted_proxy_that_is_neither_an_address_nor_a_network_is_refused(entry: str, message: str) -> None:
    assert message in refusal(overrides={"dicomweb": {"trusted_proxies": [entry]}})


@pytest.mark.parametrize("overrides, message", [
    ({"scp": {"dimse_timeout_s": "inf"}}, r"scp\.dimse_timeout_s \(the command line\): Input should be a finite number"),
    ({"delivery": {"retry_for_s": "inf"}}, r"delivery\.retry_for_s \(the command line\): Input should be a finite number"),
    ({"storage": {"retention_interval_s": 1e10}}, r"storage: .*retention_interval_s 1e\+10 s is more than a year"),
    ({"scp": {"network_timeout_s": 1e10}}, r"scp: .*network_timeout_s 1e\+10 s is more than a year"),
    ({"dicomweb": {"tokens": ["a-real-token-1234", " "]}}, r"dicomweb\.tokens holds an empty token"),
    ({"scp": {"port": 8080}, "dicomweb": {"port": 8080}}, r"scp\.port and dicomweb\.port are both 8080"),
    ({"delivery": {"destinations": [{"name": "w", "kind": "dicomweb", "url": "pacs.example/dicom-web"}]}},
     r"destination w url 'pacs\.example/dicom-web' is no http:// or https:// address"),
    ({"delivery": {"destinations": [{**PACS, "host": "10.0.0.1:104"}]}},
     r"destination pacs host '10\.0\.0\.1:104' is neither an IP address nor a host name"),
    ({"delivery": {"destinations": [{"name": "w", "kind": "dicomweb", "url": "https://pacs/dicom-web",
                                     "password": "secret"}]}}, r"destination w: a password needs its username"),
    ({"delivery": {"destinations": [{"name": "w", "kind": "dicomweb", "url": "https://stow:pw@pacs/dicom-web"}]}},
     r"destination w url holds a user name or password: give them as its username and password"),
    ({"delivery": {"destinations": [{"name": "w", "kind": "dicomweb", "url": "https://u:SECRET@/x"}]}},
     r"(?s)^(?!.*SECRET).*destination w url holds a user name or password"),
    ({"delivery": {"destinations": [{"name": "w", "kind": "dicomweb", "url": "https://pacs/x?access_token=t&a=b c"}]}},
     r"destination w url holds a space or a control character: encode it"),
    ({"delivery": {"destinations": [{"name": "w", "kind": "dicomweb", "url": "pacs/x?token=SECRET"}]}},
     r"(?s)^(?!.*SECRET).*destination w url 'pacs/x\?token=\.\.\.' is no http"),
    ({"host": " "}, r"host is empty: give 0\.0\.0\.0 for every IPv4 address"),
    ({"storage": {"max_disk_used_percent": 0.95}}, r"storage\.max_disk_used_percent 0\.95 is a percentage of the disk:"),
    ({"delivery": {"destinations": [{**PACS, "ae_title": "URONODE", "host": "localhost", "port": 11112}]}},
     r"destination pacs is this node itself \(URONODE at localhost:11112\)"),
    ({"delivery": {"known_aes": {"CT1": {"host": "ct1..bad", "port": 104}}}},
     r"delivery\.known_aes host 'ct1\.\.bad' is neither"),
])
def test_values_that_pass_for_settings_and_break_the_node_are_refused(overrides: dict[str, Any], message: str) -> None:
    """Probe 53: an infinite duration went to the receiving processes as JSON null and they died on it; 1e10 s
    stopped the retention loop and every association (OverflowError); an empty token let 'Authorization: Bearer'
    in; one port for both servers ended in uvicorn's 'address already in use'."""
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides=overrides)


@pytest.mark.parametrize("overrides, caution", [
    ({"delivery": {"destinations": [{"name": "back", "kind": "sender"}]}},
     "destination back sends results back to the AE that sent the series, but delivery.known_aes is empty"),
    ({"delivery": {"known_aes": {"CT1": {"host": "ct1", "port": 104}}}},
     "delivery.known_aes lists 1 AE title(s) but no destination is of kind sender: they are not used"),
    ({"dicomweb": {"auth": "none", "password": "pw"}}, "dicomweb.auth is none: the password set in dicomweb is never"),
    ({"dicomweb": {"auth": "none", "tokens": ["a-token-1234"]}}, "dicomweb.auth is none: the tokens set in dicomweb"),
    ({"scp": {"max_associations": 4, "max_associations_per_host": 10}},
     "scp.max_associations_per_host 10 is more than scp.max_associations 4: one host may hold 4"),
])
def test_settings_taken_but_most_likely_not_meant_are_named(
    overrides: dict[str, Any], caution: str
) -> None:
    """Probe 53: each of these was taken without a word; ``config`` names it (and ``serve`` logs it)."""
    said = load_settings(overrides=overrides).cautions()
    assert [line for line in said if line.startswith(caution)] == said[-1:], said


def test_a_sender_set_up_whole_has_no_caution_and_no_destination_has_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load_settings().cautions() == [
        "scp.restrict_callers is off: any host may store series here and hold 8 of its 16 association slots; list"
        " the scanners and the PACS in scp.allowed_callers (AE@host) and turn scp.restrict_callers on before the"
        ' node goes on a hospital network (docs/operations.md, "Before it goes on a hospital network")',
        "delivery.destinations is empty: results stay in the node (its DICOMweb and viewer) and no PACS gets them;"
        " name the PACS there (README.md, delivery.destinations)"]
    sender = {"destinations": [{"name": "back", "kind": "sender"}], "known_aes": {"CT1": {"host": "ct1", "port": 104}}}
    scp = {"max_associations_per_host": 16, "restrict_callers": True, "allowed_callers": ["CT1@ct1"]}
    assert load_settings(overrides={"delivery": sender, "scp": scp}).cautions() == []
    listed = load_settings(overrides={"delivery": sender, "scp": {"allowed_callers": ["CT1@ct1"]}}).cautions()
    assert [c for c in listed if "turn scp.restrict_callers on: scp.allowed_callers is listed but not applied" in c]
    monkeypatch.setenv("URONODE_DICOMWEB__AUTH", "none")
    monkeypatch.setenv("URONODE_DICOMWEB__PASSWORD", "pw")
    monkeypatch.setenv("URONODE_STORAGE__DATA_DIR", "/srv/uronode")
    assert main(["config"]) == 0
    out, err = capsys.readouterr()
    assert "caution: dicomweb.auth is none: the password set in dicomweb is never asked for" in err
    # probe 54: the values in effect where a setting left empty is derived, not null
    shown = json.loads(out)
    assert shown["scp"]["max_associations_per_host"] == 8
    assert shown["queue"]["worker_tokens_file"] == "/srv/uronode/worker-tokens"


def test_a_path_setting_reads_the_home_folder_and_an_empty_one_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe 53: ``~/uronode-data`` made a folder named ``~`` in the working folder; an empty TLS variable (one
    left unset in ``=$CERT``) was the working folder, which 'does not exist' as a file."""
    monkeypatch.setenv("URONODE_SCP__TLS_CERT_FILE", "")
    monkeypatch.setenv("URONODE_SCP__TLS_KEY_FILE", "")
    settings = load_settings(overrides={"storage": {"data_dir": "~/uronode-data"}})
    assert settings.storage.data_dir == Path.home() / "uronode-data"
    assert settings.scp.tls_cert_file is None and settings.scp.ssl_context() is None
