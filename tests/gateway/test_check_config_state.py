"""`edge-agent check-config` prints only `error:`/`warning:` lines naming a setting (audit after
issues 12 and 16): a state_dir that cannot be made or a bundle record that cannot be read gave a
stray unprefixed log line with Python's '[Errno 20] ...' from the bundle pin."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge_agent.bundle_pin import BundlePin
from tests.support.gateway_keys import write_key
from tests.support.edge_configs import edge_cli, write_edge_config
from tests.support.tiny_models import signed_bundle


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    d = tmp_path_factory.mktemp("owner")
    signed_bundle(d)
    write_key(d / "signing.key", "gw-1")
    return d


@pytest.fixture
def gateway(tmp_path, owner):
    for name in ("model.bundle", "owner.pub", "signing.key"):
        shutil.copy(owner / name, tmp_path / name)
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path


def write(folder: Path, **changes) -> Path:
    return write_edge_config(folder, spool_dir="spool", **changes)


def check(path: Path):
    return edge_cli("check-config", "--quick", str(path), cwd=path.parent)


def line_of(path: Path, key: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if t.startswith(f"{key}:"))


def test_a_state_dir_under_a_file_is_one_error_and_nothing_else(gateway):
    path = write(gateway, state_dir="a-file/state")
    out = check(path)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"error: {path}:{line_of(path, 'state_dir')}: state_dir {gateway / 'a-file/state'}: cannot create: "
        f"{gateway / 'a-file'} is not a folder"], out.stderr


def test_an_unreadable_bundle_record_is_a_warning_naming_state_dir(gateway):
    (gateway / "state" / "bundle.json").mkdir(parents=True)     # a folder where the record should be
    path = write(gateway)
    out = check(path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        f"warning: {path}:{line_of(path, 'state_dir')}: state_dir {gateway / 'state'}: cannot read "
        f"{gateway / 'state/bundle.json'}: Is a directory: rollback protection restarts from the bundle now "
        "on disk"], out.stderr


def test_a_damaged_record_is_reported_to_the_caller_without_errno(tmp_path):
    (tmp_path / "bundle.json").write_text("{not json")
    told: list[str] = []
    pin = BundlePin(tmp_path, None, on_problem=told.append)
    assert pin.pinned is None and pin.versions == {}
    assert len(told) == 1 and told[0].startswith(f"state_dir {tmp_path}: cannot read {tmp_path / 'bundle.json'}: "
                                                 "not a bundle record (")
    assert "Errno" not in told[0]
    told.clear()
    BundlePin(tmp_path / "a" / "b", None, on_problem=told.append)      # no record yet: nothing to say
    assert told == []
