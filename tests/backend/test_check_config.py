"""`backend-decryptor check-config` checks what `run` needs (issue 16), relative paths follow the
documented rule (issue 12), model cards and alert rules refuse what would silently misbehave."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backend_decryptor.config import load_config
from protected_nn.model_card import CardError, parse_card
from backend_decryptor.rules_config import load_rules
from backend_decryptor.store import Store
from backend_decryptor.yaml_config import ConfigError

from tests.support.fake_models import CROWD_CARD, stored

REPO = Path(__file__).resolve().parents[2]
RULES = (REPO / "configs/alert-rules.yaml").read_text()
CARD = CROWD_CARD


def write_config(folder: Path, rules: str = RULES, **changes) -> Path:
    cfg = {"store": "store", "state_db": "state.db", "alerts": {"rules_file": "rules.yaml"},
           "mqtt": {"host": "127.0.0.1"}, **changes}
    (folder / "rules.yaml").write_text(rules)
    (folder / "backend.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "backend.yaml"


def check(path: Path, cwd: Path = REPO):
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "backend_decryptor.cli", "check-config", str(path)],
                          capture_output=True, text=True, cwd=cwd, timeout=120, env=env)


def test_a_missing_ca_file_is_an_error_naming_field_and_path(tmp_path):
    path = write_config(tmp_path, mqtt={"host": "broker.example.org", "port": 8883,
                                        "tls": {"ca_file": "ca.crt"}})
    out = check(path)
    assert out.returncode == 2
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "ca_file:" in t)
    assert f"{path}:{line}: mqtt.tls.ca_file {tmp_path / 'ca.crt'}: cannot read: No such file or directory" \
        in out.stderr


def test_relative_tls_and_password_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "pw").write_text("secret\n")
    path = write_config(tmp_path, mqtt={"host": "127.0.0.1", "tls": {"ca_file": "ca.crt", "cert_file": "c.crt",
                                                                      "key_file": "c.key"},
                                        "username": "backend", "password_file": "pw"})
    cfg = load_config(path)
    assert cfg.mqtt.tls.ca_file == tmp_path / "ca.crt" and cfg.mqtt.tls.key_file == tmp_path / "c.key"
    assert cfg.mqtt.password_file == str(tmp_path / "pw") and cfg.mqtt.password() == "secret"
    assert cfg.alerts.rules_file == tmp_path / "rules.yaml"
    out = check(path, cwd=Path("/"))                  # not the folder of the file
    assert out.returncode == 2 and f"mqtt.tls.cert_file {tmp_path / 'c.crt'}: cannot read" in out.stderr
    assert "mqtt.tls.ca_file" not in out.stderr and "mqtt.password_file" not in out.stderr, out.stderr


def test_every_model_of_the_store_is_reported_with_the_fix(tmp_path):
    store = Store(tmp_path / "store")
    store.add_model("good", stored(1, CARD), "0" * 64)
    store.add_model("nocard", stored(2, None), "0" * 64)
    store.add_model("typo", stored(3, {"outputs": [{**CARD["outputs"][0], "maxx": 50}]}), "0" * 64)
    out = check(write_config(tmp_path))
    assert out.returncode == 2
    assert "model nocard: model card" in out.stderr and "--model-id nocard --card CARD.yaml" in out.stderr
    assert "model typo: model card outputs.0.maxx: unknown setting 'maxx' - did you mean 'max'?" in out.stderr
    assert "model good: outputs crowd_count, incident" in out.stdout


def test_a_rule_reading_an_output_no_model_has_is_refused_with_its_line(tmp_path):
    Store(tmp_path / "store").add_model("good", stored(1, CARD), "0" * 64)
    rules = RULES.replace("output: incident ", "output: incidnet ")
    out = check(write_config(tmp_path, rules=rules))
    line = next(i for i, text in enumerate(rules.splitlines(), 1) if "incidnet" in text)
    assert out.returncode == 2
    assert f"{tmp_path / 'rules.yaml'}:{line}: incident.output: no stored model has an output 'incidnet'" \
        in out.stderr


def test_a_taken_metrics_address_is_named(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"127.0.0.1:{s.getsockname()[1]}"
        out = check(write_config(tmp_path, metrics={"listen": address}))
    assert out.returncode == 2 and f"metrics.listen {address}: address already in use" in out.stderr


def test_no_tls_to_a_remote_broker_warns(tmp_path):
    Store(tmp_path / "store")                          # `run` needs a store (else an error)
    out = check(write_config(tmp_path, mqtt={"host": "broker.example.org"}))
    assert out.returncode == 0, out.stderr
    assert "warning:" in out.stderr and "no tls: section for broker broker.example.org" in out.stderr


def test_typos_get_a_suggestion(tmp_path):
    path = write_config(tmp_path, mqtt={"hots": "x"})
    with pytest.raises(ConfigError, match=r"backend.yaml:\d+: mqtt.hots: unknown setting 'hots' - did you mean 'host'\?"):
        load_config(path)


def test_a_card_typo_no_longer_drops_a_bound():
    with pytest.raises(CardError, match="did you mean 'max'"):
        parse_card("m", {"outputs": [{"name": "c", "index": 0, "kind": "count", "maxx": 50}]})


@pytest.mark.parametrize("rules,where,message", [
    ("crowd:\n  threshold: 20\n  hysteresis: 40\n", ":3: crowd.hysteresis:", "would never clear"),
    ("crowd:\n  levels:\n    low: 0\n    high: 20\n    very_high: 10\n", ":5: crowd.levels.very_high:",
     "very_high (10) is not above high (20)"),
    ("zones:\n  z:\n    cameras: [c1]\n    crowd:\n      threshold: 3\n      hysteresis: 3\n",
     ":6: zones.z.crowd.hysteresis:", "hysteresis 3 is not below threshold 3"),
    ("crowd:\n  treshold: 4\n", ":2: crowd.treshold:", "did you mean 'threshold'?"),
])
def test_rules_that_never_clear_or_do_not_rise_are_refused(tmp_path, rules, where, message):
    (tmp_path / "r.yaml").write_text(rules)
    with pytest.raises(ConfigError) as exc:
        load_rules(tmp_path / "r.yaml")
    assert where in str(exc.value) and message in str(exc.value)
