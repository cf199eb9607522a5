"""How the test suite is put together (issue 12): what several test files share lives in
tests/support/ or a conftest.py, never in a test module another one imports - an import of a test
module also imports its tests and fixtures, and a helper changed for one test silently changes
another's. Checked by reading every module's imports (ast), not by running anything."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"


def _python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py") if ".venv" not in p.parts)


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def _is_test_module(name: str) -> bool:
    return name.split(".")[0] == "tests" and name.rsplit(".", 1)[-1].startswith("test_")


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, module) for every import in `source`, the text of the module named `module`:
    relative imports resolved, and for `from package import name` both the package and
    package.name (the name may be a module); imports inside functions count too."""
    package = module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def test_the_scan_sees_every_spelling_of_an_import():
    """The check below must not pass because the scanner misses a form of import."""
    source = ("import tests.gateway.test_daemon\nfrom tests.storage.test_store import fake\n"
              "from tests.formats import test_bundle\nfrom . import test_e2e\nfrom .test_rules import run\n"
              "from ..support import backend\n"
              "def f():\n    from tests.cli.test_commands import run\n")
    found = {name for _, name in imported_modules(source, "tests.backend.test_probe")}
    test_modules = {name for name in found if _is_test_module(name)}
    assert test_modules == {"tests.gateway.test_daemon", "tests.storage.test_store", "tests.formats.test_bundle",
                            "tests.backend.test_e2e", "tests.backend.test_rules", "tests.cli.test_commands"}
    assert "tests.support.backend" in found and not _is_test_module("tests.support.backend")


def test_no_test_or_benchmark_imports_a_test_module():
    offenders = [f"{path.relative_to(REPO)}:{line}: imports {name}"
                 for path in _python_files(TESTS, REPO / "bench")
                 for line, name in imported_modules(path.read_text(), _module_name(path))
                 if _is_test_module(name)]
    assert not offenders, ("move what is shared into tests/support/ or a conftest.py:\n"
                           + "\n".join(offenders))


def test_support_modules_are_not_named_like_tests():
    """pytest would collect a tests/support/test_*.py as a test file."""
    named_like_tests = [str(p.relative_to(REPO)) for p in (TESTS / "support").rglob("test_*.py")]
    assert not named_like_tests


def test_every_test_folder_is_a_package():
    """Test files in different folders may share a name (tests/backend/test_config.py,
    tests/storage/test_config.py) only if each folder is a package."""
    folders = {p.parent for p in TESTS.rglob("test_*.py")} | {p.parent for p in TESTS.rglob("conftest.py")}
    missing = sorted(str(f.relative_to(REPO)) for f in folders if not (f / "__init__.py").exists())
    assert not missing, f"folders without __init__.py: {missing}"


def test_one_broker_fixture():
    """Variants of the broker are kinds of the one `broker` fixture (tests/conftest.py), chosen by
    pytest.mark.broker(kind): a test module's own `broker` would silently shadow it."""
    defined = []
    for path in _python_files(TESTS):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "broker" and any(
                    "fixture" in ast.unparse(d) for d in node.decorator_list):
                defined.append(str(path.relative_to(REPO)))
    assert defined == ["tests/conftest.py"], defined
