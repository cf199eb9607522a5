"""protected_nn.bundle.write_bundle leaves no `<path>.tmp` behind when it fails (audit after
issue 16: `export`, the tests and the benchmarks write bundles with it)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from protected_nn import bundle
from protected_nn.artifacts import MEMBERS, ModelArtifacts

REPO = Path(__file__).resolve().parents[2]


def fake_artifacts(seed: int = 0) -> ModelArtifacts:
    rng = random.Random(seed)
    members = {m: rng.randbytes(rng.randint(50, 400)) for m in MEMBERS}
    members["plan"] = json.dumps({"layers": [], "seed": seed}).encode()
    members["model_card"] = json.dumps({"outputs": ["a", "b"]}).encode()
    return ModelArtifacts(**members)


def test_a_rename_that_fails_removes_the_temp_file(tmp_path):
    target = tmp_path / "m.bundle"
    target.mkdir()
    (target / "keep").write_text("a folder in the way")     # os.replace cannot put a file over it
    with pytest.raises(OSError):
        bundle.write_bundle(target, "m", fake_artifacts(), bundle.generate_owner_key())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bundle"]
    assert (target / "keep").read_text() == "a folder in the way"


def test_a_write_that_fails_half_way_removes_the_temp_file(tmp_path):
    """A real short write: the kernel refuses to grow a file past RLIMIT_FSIZE (like a full disk)."""
    code = (
        "import random, resource, signal, sys\n"
        "from protected_nn import bundle\n"
        "from protected_nn.artifacts import MEMBERS, ModelArtifacts\n"
        "rng = random.Random(0)\n"
        "a = ModelArtifacts(**{m: rng.randbytes(20000) for m in MEMBERS})\n"
        "key = bundle.generate_owner_key()\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        "    bundle.write_bundle(sys.argv[1], 'm', a, key)\n"
        "except OSError as e:\n"
        "    print('failed', e.errno)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.bundle")], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.stdout.startswith("failed"), out.stdout + out.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_good_write_still_leaves_only_the_bundle(tmp_path):
    key = bundle.generate_owner_key()
    manifest = bundle.write_bundle(tmp_path / "m.bundle", "m", fake_artifacts(), key, version=3)
    assert manifest["version"] == 3 and [p.name for p in tmp_path.iterdir()] == ["m.bundle"]
    assert bundle.read_bundle(tmp_path / "m.bundle", key.public_key())[0]["model_id"] == "m"
