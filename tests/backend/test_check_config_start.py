"""`backend-decryptor check-config` fails where `run` fails, and says what to do (audit after
issues 12 and 16): a missing store, a state_db under a regular file, a missing rules file, a
model without a card, and help that says what `run` and `check-config` do."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from backend_decryptor.store import Store

from tests.support.fake_models import CROWD_CARD, stored

REPO = Path(__file__).resolve().parents[2]
RULES = (REPO / "configs/alert-rules.yaml").read_text()
CARD = CROWD_CARD


def write_config(folder: Path, **changes) -> Path:
    cfg = {"store": "store", "state_db": "state.db", "alerts": {"rules_file": "rules.yaml"},
           "mqtt": {"host": "127.0.0.1"}, **changes}
    (folder / "rules.yaml").write_text(RULES)
    path = folder / "backend.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def line_of(path: Path, key: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if t.strip().startswith(f"{key}:"))


def backend(*args, cwd: Path = REPO, timeout: float = 60):
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "backend_decryptor.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env=env)


def errors(out) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("error: ")]


def test_a_missing_store_is_an_error_in_both_with_the_command_that_makes_it(tmp_path):
    """Before: check-config said ok with a warning, `run` then refused to start."""
    path = write_config(tmp_path)
    want = (f"error: {path}:{line_of(path, 'store')}: store {tmp_path / 'store'}: does not exist: protect a "
            f"model into it first: backend-decryptor protect MODEL.onnx --model-id ID --store {tmp_path / 'store'}")
    check = backend("check-config", str(path))
    assert check.returncode == 2 and want in errors(check), check.stderr
    assert "NOT ok" in check.stdout
    run = backend("run", "--config", str(path))
    assert run.returncode == 2 and errors(run) == [want], run.stderr


def test_an_empty_store_passes(tmp_path):
    Store(tmp_path / "store")
    out = backend("check-config", str(write_config(tmp_path)))
    assert out.returncode == 0 and not errors(out), out.stderr


def test_a_state_db_under_a_regular_file_is_an_error_naming_state_db(tmp_path):
    """Before: check-config said ok, `run` said '/x/a-file: File exists' (no setting)."""
    Store(tmp_path / "store")
    (tmp_path / "a-file").write_text("not a folder")
    for state_db in ("a-file/state.db", "a-file/sub/state.db"):
        path = write_config(tmp_path, state_db=state_db)
        want = (f"error: {path}:{line_of(path, 'state_db')}: state_db {tmp_path / state_db}: cannot create: "
                f"{tmp_path / 'a-file'} is not a folder")
        check = backend("check-config", str(path))
        assert check.returncode == 2 and errors(check) == [want], check.stderr
        run = backend("run", "--config", str(path))
        assert run.returncode == 2 and errors(run) == [want], run.stderr
        assert "Errno" not in run.stderr and "File exists" not in run.stderr


def test_a_state_db_that_is_a_folder_is_an_error(tmp_path):
    Store(tmp_path / "store")
    (tmp_path / "db").mkdir()
    path = write_config(tmp_path, state_db="db")
    out = backend("check-config", str(path))
    assert out.returncode == 2 and f"state_db {tmp_path / 'db'}: is a folder, not the SQLite file" in out.stderr


def test_a_state_db_in_a_folder_not_made_yet_passes(tmp_path):
    Store(tmp_path / "store")
    out = backend("check-config", str(write_config(tmp_path, state_db="new/folder/state.db")))
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "new").exists()             # checked, not made


def test_a_missing_rules_file_names_its_setting_and_line(tmp_path):
    """Before: '/x/nope.yaml: cannot read: ...' with neither setting nor line."""
    Store(tmp_path / "store")
    path = write_config(tmp_path, alerts={"rules_file": "nope.yaml"})
    want = (f"error: {path}:{line_of(path, 'rules_file')}: alerts.rules_file {tmp_path / 'nope.yaml'}: "
            "cannot read: No such file or directory")
    for args in (["check-config", str(path)], ["run", "--config", str(path)]):
        out = backend(*args)
        assert out.returncode == 2 and errors(out) == [want], out.stderr


def test_the_default_rules_file_is_named_too(tmp_path):
    """No rules_file in the config: the setting is still named (its default), with the file."""
    Store(tmp_path / "store")
    path = tmp_path / "backend.yaml"
    path.write_text(yaml.safe_dump({"store": "store", "state_db": "state.db", "mqtt": {"host": "127.0.0.1"}}))
    out = backend("check-config", str(path))
    assert out.returncode == 2
    assert errors(out) == [f"error: {path}: alerts.rules_file {tmp_path / 'alert-rules.yaml'}: cannot read: "
                           "No such file or directory"], out.stderr


def test_the_fix_for_a_model_without_a_card_is_one_that_works(tmp_path):
    """Before: '... or retire it', but `models retire` refuses the active key version, and a model
    without a card has only its active one."""
    store = Store(tmp_path / "store")
    store.add_model("nocard", stored(2, None), "0" * 64)
    out = backend("check-config", str(write_config(tmp_path)))
    assert out.returncode == 2
    [line] = [e for e in errors(out) if "model nocard" in e]
    assert "backend-decryptor protect MODEL.onnx --model-id nocard --card CARD.yaml" in line
    assert "new key version" in line and "retire" not in line, line
    # the remedy that was offered before does not work
    retire = backend("models", "--store", str(tmp_path / "store"), "retire", "nocard", "--key-version", "1")
    assert retire.returncode == 2 and "active" in retire.stderr, retire.stderr
    assert "--card" in backend("protect", "--help").stdout


def test_run_and_check_config_help_say_what_they_do():
    for command, words in (("run", ["alerts.rules_file", "store", "state_db", "Exit 0", "2 when"]),
                           ("check-config", ["alerts.rules_file", "store", "Exit 0", "2 otherwise"])):
        out = backend(command, "--help")
        assert out.returncode == 0
        text = " ".join(out.stdout.split())
        description = text.split("options:")[0].split("usage:")[1]
        for word in words:
            assert word in description, (command, word, text)
