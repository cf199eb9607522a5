"""Issue 16: `edge-agent check-config` fails where `run` would fail - a state or spool folder that
cannot be made because a file stands where a folder should be (before: check-config said ok,
`run` then said "cannot create: Not a directory")."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.gateway_keys import write_key
from tests.support.edge_configs import edge_cli, write_edge_config
from tests.support.tiny_models import signed_bundle


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    d = tmp_path_factory.mktemp("gw")
    signed_bundle(d)
    write_key(d / "signing.key", "gw-1")
    (d / "a-file").write_text("not a folder")
    return d


write = write_edge_config


edge = edge_cli


@pytest.mark.parametrize("setting, value, field", [
    ("state_dir", "a-file/state", "state_dir"),
    ("spool", {"directory": "a-file/spool"}, "spool.directory")])
def test_a_folder_run_cannot_make_is_an_error_naming_its_field(gateway, setting, value, field):
    path = write(gateway, **{setting: value})
    out = edge("check-config", "--quick", str(path), cwd=gateway)
    assert out.returncode == 2, out.stdout + out.stderr
    shown = value if isinstance(value, str) else value["directory"]
    assert f"{field} {gateway / shown}: cannot create: {gateway / 'a-file'} is not a folder" in out.stderr
    run = edge("run", "--config", str(path), cwd=gateway)     # what `run` says about the same file
    assert run.returncode == 2 and f"{field} {gateway / shown}: cannot create" in run.stderr


def test_the_same_config_with_real_folders_passes(gateway):
    out = edge("check-config", "--quick", str(write(gateway)), cwd=gateway)
    assert out.returncode == 0, out.stderr


def test_an_owner_key_that_is_not_a_key_is_named_by_its_own_setting(gateway):
    """Before: check-config blamed the `bundle:` line, `run` named no setting at all."""
    path = write(gateway, owner_public_key="a-file")
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if t.startswith("owner_public_key:"))
    for args in (["check-config", "--quick", str(path)], ["run", "--config", str(path)]):
        out = edge(*args, cwd=gateway)
        assert out.returncode == 2, out.stderr
        assert f"error: {path}:{line}: owner_public_key: owner public key {gateway / 'a-file'} is not a PEM " \
               "public key" in out.stderr, out.stderr
