"""Malformed YAML and wrong types in both services' configs: `check-config` names file, line and
field for every problem, exits 2, and never shows a traceback (hostile or clumsy YAML included:
unhashable keys, python tags, merge keys, recursive aliases, tabs, duplicates)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backend_decryptor import cli as backend_cli
from edge_agent import cli as edge_cli

REPO = Path(__file__).resolve().parents[2]

EDGE_OK = "gateway_id: gw-1\nbundle: model.bundle\nowner_public_key: @PUB@\ncameras:\n  - id: cam-1\n" \
          "    url: rtsp://127.0.0.1:8554/cam\nmqtt: {host: 127.0.0.1}\n"

# (name, yaml text, [every expected line fragment]) - @PUB@ is an existing file
EDGE_CASES = [
    ("wrong types", "gateway_id: gw-1\nbundle: b\nowner_public_key: @PUB@\ncameras:\n  - id: c1\n"
                    "    url: rtsp://x/y\n    max_fps: fast\nmqtt: {host: h, port: \"x\", qos: 3}\nworkers: [1]\n",
     [":7: cameras[0].max_fps: Input should be a valid number", ":8: mqtt.port: Input should be a valid integer",
      ":8: mqtt.qos: ", ":9: workers: Input should be a valid integer"]),
    ("unknown key", EDGE_OK + "mqtt_tls: yes\n", [":8: mqtt_tls: unknown setting"]),
    ("nested unknown key", EDGE_OK.replace("{host: 127.0.0.1}", "\n  host: h\n  pasword_file: x"),
     [":9: mqtt.pasword_file: unknown setting"]),
    ("unclosed bracket", "gateway_id: gw\ncameras: [\n  - id: c1\n", [":3: YAML syntax"]),
    ("tab indentation", "gateway_id: gw\n\tbundle: x\n", [":2: YAML syntax"]),
    ("a list, not a mapping", "- a\n- b\n", [":1: (top level): expected a mapping"]),
    ("empty file", "", [":1: (top level): expected a mapping"]),
    ("duplicate key", EDGE_OK + "gateway_id: gw-2\n", [":8: gateway_id: given twice (first on line 1)"]),
    ("unhashable key", "? [a, b]\n: 1\n", [":1: YAML syntax error: found unhashable key"]),
    ("python tag", "gateway_id: !!python/object/apply:os.system [echo hacked]\n", [":1: YAML syntax"]),
    ("recursive alias", EDGE_OK.replace("cameras:\n  - id: cam-1\n    url: rtsp://127.0.0.1:8554/cam\n",
                                        "cameras: &a [*a]\n"), [":4: cameras[0]: "]),
    ("out of range", EDGE_OK + "queue_size: -5\nspool: {max_bytes: 10}\n",
     [":8: queue_size: ", ":9: spool.max_bytes: "]),
]

BACKEND_CASES = [
    ("wrong types", "store: s\nmqtt:\n  host: h\n  port: high\n  tls: {insecure: maybe}\nchecks:\n"
                    "  allowed_gateways: gw-1\n  max_clock_skew: 5 fortnights\ndecrypt: {workers: -1}\nlog_level: LOUD\n",
     [":4: mqtt.port: Input should be a valid integer", ":5: mqtt.tls.insecure: Input should be a valid boolean",
      ":8: checks.max_clock_skew: ", "'5 fortnights' is not a duration", ":7: checks.allowed_gateways: ",
      ":9: decrypt.workers: ", ":10: log_level: "]),
    ("unknown key", "mqtt:\n  hots: x\n", [":2: mqtt.hots: unknown setting"]),
    ("unclosed bracket", "mqtt: {host: [\n", [":2: YAML syntax error"]),
    ("a list, not a mapping", "- a\n", [":1: (top level): expected a mapping"]),
    ("unhashable key", "? [a, b]\n: 1\n", [":1: YAML syntax error: found unhashable key"]),
    ("python tag", "store: !!python/object/apply:os.system [echo hacked]\n", [":1: YAML syntax error"]),
    ("rules: wrong types", "alerts: {rules_file: @RULES@}\n",
     ["rules.yaml:2: crowd.threshold: Input should be a valid number", "rules.yaml:3: crowd.consecutive: ",
      "rules.yaml:4: incident.probability: ", "rules.yaml:5: zones.z.cameras: "]),
]
RULES = "crowd:\n  threshold: high\n  consecutive: 0\nincident: {probability: 2}\nzones: {z: {cameras: c}}\n"


def _run(main, argv, capsys) -> tuple[int, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("name,text,expected", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_edge_check_config_names_file_line_field(tmp_path, capsys, name, text, expected):
    (tmp_path / "owner.pub").write_text("not checked by check-config's parser\n")
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(text.replace("@PUB@", str(tmp_path / "owner.pub")))
    code, out = _run(edge_cli.main, ["check-config", str(cfg)], capsys)
    assert code == 2, out
    for fragment in expected:
        assert f"{cfg}{fragment}" in out or (not fragment.startswith(":") and fragment in out), (fragment, out)


@pytest.mark.parametrize("name,text,expected", BACKEND_CASES, ids=[c[0] for c in BACKEND_CASES])
def test_backend_check_config_names_file_line_field(tmp_path, capsys, name, text, expected):
    (tmp_path / "rules.yaml").write_text(RULES)
    cfg = tmp_path / "backend.yaml"
    cfg.write_text(text.replace("@RULES@", str(tmp_path / "rules.yaml")))
    code, out = _run(backend_cli.main, ["check-config", str(cfg)], capsys)
    assert code == 2, out
    for fragment in expected:
        where = cfg.name if fragment.startswith(":") else ""
        assert f"{where}{fragment}" in out, (fragment, out)


def test_backend_check_config_refuses_a_setting_given_twice(tmp_path, capsys):
    (tmp_path / "rules.yaml").write_text("crowd: {threshold: 10}\n")
    cfg = tmp_path / "backend.yaml"
    cfg.write_text(f"alerts: {{rules_file: {tmp_path / 'rules.yaml'}}}\nlog_level: INFO\nlog_level: DEBUG\n")
    code, out = _run(backend_cli.main, ["check-config", str(cfg)], capsys)
    assert code == 2 and "log_level" in out and ":3:" in out, out


@pytest.mark.parametrize("command", [[sys.executable, "-m", "edge_agent.cli"], [sys.executable, "-m", "backend_decryptor.cli"]])
def test_console_commands_exit_2_without_traceback(tmp_path, command):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("? [a, b]\n: 1\nx: &a [*a]\n")
    run = subprocess.run(command + ["check-config", str(cfg)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert f"{cfg}:1: " in run.stderr or f"{cfg.name}:1: " in run.stderr, run.stderr
