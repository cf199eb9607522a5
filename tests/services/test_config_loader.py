"""Both services load their YAML with one loader (service_common, issue 12): the same mistake
reads the same in either service's `check-config`, problems are one `error:` line each, renamed
broker keys keep working with a warning naming file and line, and the backend takes every file
setting relative to the config file. Each test here drives the services' own commands or loaders,
so it runs unchanged against the code before the shared package."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backend_decryptor.config import load_config as load_backend
from edge_agent.config import load_config as load_edge

REPO = Path(__file__).resolve().parents[2]
EDGE = ("gateway_id: gw-1\nbundle: model.bundle\nowner_public_key: owner.pub\nsigning_key_file: owner.pub\n"
        "cameras:\n  - id: cam-1\n    url: rtsp://127.0.0.1:8554/cam\nmqtt:\n  host: 127.0.0.1\n")
BACKEND = "store: store\nstate_db: state.db\nmqtt:\n  host: 127.0.0.1\n"


def check_config(tool: str, path: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", f"{tool}.cli", "check-config", str(path)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def problems_of(tool: str, path: Path) -> list[str]:
    """check-config's error lines without the 'error: FILE:LINE: ' lead."""
    out = check_config(tool, path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    return [re.sub(rf"^error: {re.escape(str(path))}(:\d+)?: ", "", line) for line in out.stderr.splitlines()
            if line.startswith("error:")]


def folder(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir()
    (tmp_path / name / "owner.pub").write_text("placeholder")
    return tmp_path / name


# (what, edge YAML, backend YAML, the text both must report)
SAME_MISTAKES = [
    ("YAML syntax", "gateway_id: [\n", "store: [\n", "YAML syntax error: "),
    ("a list at the top", "- a\n", "- a\n", "(top level): expected a mapping of settings"),
    ("a key given twice", EDGE + "gateway_id: gw-2\n", BACKEND + "store: other\n", "given twice (first on line "),
    ("a duration without a known unit", EDGE + "  resume_delay_s: 5x\n", BACKEND + "  session_expiry: 5x\n",
     "'5x' is not a duration (examples: 30s, 5m, 1h, 250ms)"),
]


@pytest.mark.parametrize("what,edge_yaml,backend_yaml,expected", SAME_MISTAKES, ids=[m[0] for m in SAME_MISTAKES])
def test_the_same_mistake_reads_the_same_in_both_services(tmp_path, what, edge_yaml, backend_yaml, expected):
    edge, backend = folder(tmp_path, "edge") / "edge.yaml", folder(tmp_path, "backend") / "backend.yaml"
    edge.write_text(edge_yaml)
    backend.write_text(backend_yaml)
    edge_says = [p for p in problems_of("edge_agent", edge) if expected in p]
    backend_says = [p for p in problems_of("backend_decryptor", backend) if expected in p]
    assert edge_says and backend_says, (problems_of("edge_agent", edge), problems_of("backend_decryptor", backend))
    strip = lambda p: p.split(": ", 1)[-1] if not p.startswith(("YAML", "(top")) else p   # noqa: E731 (the setting)
    assert {strip(p) for p in edge_says} == {strip(p) for p in backend_says}


def test_a_list_item_is_named_alike_in_both_services(tmp_path):
    edge, backend = folder(tmp_path, "edge") / "edge.yaml", folder(tmp_path, "backend") / "backend.yaml"
    edge.write_text(EDGE.replace("  - id: cam-1\n", "  - id: [cam-1]\n"))
    backend.write_text(BACKEND + "checks:\n  gateway_cameras:\n    gw-1: [[cam-1]]\n")
    assert any(p.startswith("cameras[0].id: ") for p in problems_of("edge_agent", edge))
    assert any(p.startswith("checks.gateway_cameras.gw-1[0]: ") for p in problems_of("backend_decryptor", backend))


def test_a_recursive_alias_in_the_backend_config_is_an_error_line_not_a_traceback(tmp_path):
    path = folder(tmp_path, "backend") / "backend.yaml"
    path.write_text(BACKEND + "checks:\n  allowed_gateways: &a [*a]\n")
    out = check_config("backend_decryptor", path)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "RecursionError" not in out.stderr, out.stderr
    assert f"error: {path}:6: checks.allowed_gateways[0]: " in out.stderr, out.stderr


def test_every_problem_is_its_own_error_line(tmp_path):
    path = folder(tmp_path, "backend") / "backend.yaml"
    path.write_text(BACKEND + "  port: high\nlog_level: LOUD\nchecks: {max_clock_skew: soon}\n")
    out = check_config("backend_decryptor", path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 3, out.stderr
    assert all(line.startswith(f"error: {path}:") for line in lines), out.stderr


def test_the_backend_reads_topic_prefix_and_its_old_spelling_with_a_warning(tmp_path, capsys):
    base = folder(tmp_path, "backend")
    (base / "new.yaml").write_text(BACKEND + "  topic_prefix: site-a\n")
    assert load_backend(base / "new.yaml").mqtt.topic_prefix == "site-a"
    assert capsys.readouterr().err == ""
    (base / "old.yaml").write_text(BACKEND + "  prefix: site-b\n")
    assert load_backend(base / "old.yaml").mqtt.topic_prefix == "site-b"
    assert f"warning: {base / 'old.yaml'}:5: mqtt.prefix: deprecated spelling of 'topic_prefix'" in capsys.readouterr().err
    (base / "both.yaml").write_text(BACKEND + "  prefix: a\n  topic_prefix: b\n")
    out = check_config("backend_decryptor", base / "both.yaml")
    assert out.returncode == 2 and f"{base / 'both.yaml'}:5: mqtt.prefix: the old spelling of 'topic_prefix'" \
        in out.stderr, out.stderr


def test_the_gateway_reads_max_in_flight_and_its_old_spelling_with_a_warning(tmp_path, capsys):
    base = folder(tmp_path, "edge")
    (base / "new.yaml").write_text(EDGE + "  max_in_flight: 7\n")
    assert load_edge(base / "new.yaml").mqtt.max_in_flight == 7
    (base / "old.yaml").write_text(EDGE + "  max_inflight: 9\n")
    assert load_edge(base / "old.yaml").mqtt.max_in_flight == 9
    assert f"warning: {base / 'old.yaml'}:10: mqtt.max_inflight: deprecated spelling of 'max_in_flight'" \
        in capsys.readouterr().err
    (base / "bad.yaml").write_text(EDGE + "  max_inflight: 0\n")       # errors name the line of the old key
    assert any(p.startswith("mqtt.max_in_flight: Input should be greater than or equal to 1")
               for p in problems_of("edge_agent", base / "bad.yaml"))


def test_every_backend_file_setting_is_relative_to_the_config_file(tmp_path, monkeypatch):
    base = folder(tmp_path, "conf")
    (base / "backend.yaml").write_text(
        "mqtt:\n  host: 127.0.0.1\n  username: b\n  password_file: secrets/mqtt\n"
        "  tls: {ca_file: ca.pem, cert_file: c.pem, key_file: c.key}\n"
        "database: {url: state.sqlite, password_file: secrets/db, sslrootcert: db-ca.pem}\n")
    monkeypatch.chdir(tmp_path)                       # not the folder of the file
    cfg = load_backend("conf/backend.yaml")
    tls, db = cfg.mqtt.tls, cfg.database
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (base / "ca.pem", base / "c.pem", base / "c.key")
    assert cfg.mqtt.password_file == str(base / "secrets/mqtt") and db.password_file == str(base / "secrets/db")
    assert db.sslrootcert == base / "db-ca.pem" and cfg.sqlite_path() == base / "state.sqlite"
    assert cfg.alerts.rules_file == base / "alert-rules.yaml"     # the default too
    (base / "short.yaml").write_text("database: other.sqlite\n")  # the shorthand of database.url
    assert load_backend("conf/short.yaml").sqlite_path() == base / "other.sqlite"


def test_credentials_directory_paths_stay_as_written_until_systemd_provides_them(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "backend.yaml").write_text("mqtt:\n  username: b\n  password_file: ${CREDENTIALS_DIRECTORY}/pw\n")
    assert load_backend(tmp_path / "backend.yaml").mqtt.password_file == "${CREDENTIALS_DIRECTORY}/pw"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pw").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_backend(tmp_path / "backend.yaml").mqtt.password() == "s3cret"
