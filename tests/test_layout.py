"""The package's layout rules (docs/design.md), checked mechanically.

Library modules never import argparse or a command module; commands never import each
other; no function is longer than 60 lines; `--help` of every command answers without
importing TensorFlow.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "keras_adder"
COMMANDS = {"train", "evaluate", "predict", "export", "bench", "demo"}
COMMAND_PLUMBING = {"cli"}  # argparse types and exit codes, for commands only
MAX_FUNCTION_LINES = 60


def modules():
    return {path.stem: ast.parse(path.read_text()) for path in PACKAGE.glob("*.py")}


def imported_modules(tree):
    """Every module name an import statement names, anywhere in the file."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def project_modules(tree):
    return {name.split(".")[1] for name in imported_modules(tree)
            if name.startswith("keras_adder.") and len(name.split(".")) > 1}


def test_the_commands_are_the_modules_with_a_main():
    with_main = {name for name, tree in modules().items()
                 if any(isinstance(node, ast.FunctionDef) and node.name == "main"
                        for node in tree.body)}
    assert with_main == COMMANDS


@pytest.mark.parametrize("name", sorted(set(modules()) - COMMANDS - COMMAND_PLUMBING))
def test_library_modules_import_no_command_and_no_argparse(name):
    tree = modules()[name]
    assert "argparse" not in imported_modules(tree)
    assert not project_modules(tree) & (COMMANDS | COMMAND_PLUMBING)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_commands_never_import_each_other(name):
    assert not project_modules(modules()[name]) & (COMMANDS - {name})


def test_no_function_is_longer_than_60_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in modules().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long


HELP_WITHOUT_TENSORFLOW = """
import contextlib, io, sys
from keras_adder.{name} import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(["--help"])
    except SystemExit as exit:
        assert exit.code == 0, exit.code
assert "usage:" in out.getvalue()
print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_imports_no_tensorflow(name):
    result = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TENSORFLOW.format(name=name)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert result.stderr == ""
