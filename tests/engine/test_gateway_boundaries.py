"""Issue 9 item 6's invariants of the gateway side: every edge_agent module plus loading and
running a real signed bundle imports no compiler (or frontend) module; `api.py` and
`runtime/selfcheck.py` do not import each other; the evaluator dispatches steps by a handler
table, one handler per step type, and refuses a kind it does not know before running."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from protected_nn.errors import BundleError
from protected_nn.runtime import steps as S
from protected_nn.runtime.evaluator import Evaluator
from protected_nn.runtime.plan_links import STEP_RULES
from protected_nn.runtime.plan_sections import read_plan
from tests.support.tiny_models import signed_bundle

REPO = Path(__file__).resolve().parents[2]
OWNER_ONLY = ("protected_nn.compiler", "protected_nn.frontend")


@pytest.fixture(scope="module")
def bundle_files(tmp_path_factory):
    return signed_bundle(tmp_path_factory.mktemp("bundle"))


def test_the_gateway_side_imports_no_compiler(bundle_files):
    """A fresh interpreter imports every edge_agent module, loads the bundle as the daemon does
    (edge_agent/bundle_watch.py), builds the worker's model and runs one inference."""
    bundle, owner_pub = bundle_files
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        import numpy as np
        import edge_agent
        for mod in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
            importlib.import_module(mod.name)
        from pathlib import Path
        from edge_agent.bundle_watch import load_bundle
        from edge_agent.pool import DEFAULT_MODEL_CLASS, _load_class
        from protected_nn.bundle import load_owner_public_key
        model, _ = load_bundle(Path({str(bundle)!r}), load_owner_public_key({str(owner_pub)!r}))
        edge = _load_class(DEFAULT_MODEL_CLASS)(model.artifacts)
        assert len(edge.infer(np.zeros(edge.input_shape, np.float32))) > 1000
        print(",".join(sorted(m for m in sys.modules if m.startswith({OWNER_ONLY!r}))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the gateway side loaded owner-side modules: {out.stdout}"


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions (relative ones resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = ".".join(path.relative_to(REPO).with_suffix("").parts[:-node.level])
                base = f"{pkg}.{base}" if base else pkg
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_api_and_selfcheck_do_not_import_each_other():
    """The facade runs the self-check (one way); no runtime module imports the facade back."""
    runtime = sorted((REPO / "protected_nn" / "runtime").glob("*.py"))
    assert REPO / "protected_nn" / "runtime" / "selfcheck.py" in runtime
    for path in runtime:
        back = {m for m in _imports(path) if m == "protected_nn.api" or m.startswith("protected_nn.api.")}
        assert not back, f"{path.name} imports the facade: {back}"
    api = _imports(REPO / "protected_nn" / "api.py")
    assert "protected_nn.runtime.selfcheck" in api    # the test above is about a real edge


def _plan(bundle_files):
    from protected_nn.bundle import read_bundle
    return read_bundle(bundle_files[0], None)[1].plan_json()


def test_evaluator_has_one_handler_per_step_type(bundle_files):
    doc = _plan(bundle_files)
    plan = read_plan(json.dumps(doc))
    ev = Evaluator(plan, None, [None] * len(plan.weights))      # no step is run
    assert set(ev._handlers) == set(S.STEP_TYPES.values())
    assert set(STEP_RULES) == set(S.STEP_TYPES.values()), "a step kind without its rules (plan_links.py)"


def test_evaluator_refuses_an_unknown_step_before_running(bundle_files):
    doc = _plan(bundle_files)
    doc["steps"].append(dict(doc["steps"][-1], op="teleport"))
    with pytest.raises(BundleError, match="step kinds this gateway does not know: teleport"):
        Evaluator(doc, None, [])
    with pytest.raises(BundleError, match="weight ciphertexts for a plan of"):
        Evaluator(_plan(bundle_files), None, [])


@pytest.mark.parametrize("change,needle", [
    (lambda d: d.update(version=4), "plan version 4 is not one this gateway knows"),
    (lambda d: d["output"].update(scale="big"), "plan section 'output': field 'scale'")])
def test_the_gateway_refuses_a_signed_bundle_whose_plan_it_cannot_read(tmp_path, change, needle):
    """Refused where the daemon verifies a bundle (before it is pinned or handed to workers, so
    the running model stays), not by workers that then cannot load it."""
    import dataclasses
    from edge_agent.bundle_watch import load_bundle
    from protected_nn import bundle
    from tests.support.fake_models import fake_artifacts
    good = fake_artifacts(1)
    doc = json.loads(good.plan)
    change(doc)
    key = bundle.generate_owner_key()
    for name, art in (("good", good), ("bad", dataclasses.replace(good, plan=json.dumps(doc).encode()))):
        bundle.write_bundle(tmp_path / name, "m", art, key)
    assert load_bundle(tmp_path / "good", key.public_key())[1]["model_id"] == "m"
    with pytest.raises(BundleError, match=needle):
        load_bundle(tmp_path / "bad", key.public_key())
