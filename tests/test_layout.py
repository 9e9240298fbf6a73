"""The package's layout rules (docs/design.md, "Layout"), checked mechanically.

Commands sit at the top of the package and import wings, never each other; the
library lives in wings whose imports run one way, in the order docs/design.md writes
down; no two modules, and no wing and command, are named as forms of one word;
library modules never import argparse or a command; no function is longer than 60
lines; `--help` of every command answers without importing TensorFlow. The checks
themselves are tried on a small fixture package that breaks each rule.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_adder"
COMMANDS = {"train", "evaluate", "predict", "export", "bench", "demo"}
COMMAND_PLUMBING = {"cli"}  # argparse types and exit codes, for commands only
MAX_FUNCTION_LINES = 60
# Endings that make another form of one word: train/training, evaluate/evaluation,
# bench/benchmark, plot/plots.
SUFFIXES = ("ations", "ation", "ions", "ion", "ings", "ing", "ments", "ment", "mark",
            "ates", "ate", "ers", "er", "s", "e")


def wing_order(design=ROOT / "docs" / "design.md"):
    """The wings from the ground up, as docs/design.md's "Wing order" line names them."""
    for line in design.read_text().splitlines():
        if line.startswith("Wing order"):
            return re.findall(r"`([a-z_]+)`", line)
    raise AssertionError(f"{design} has no 'Wing order' line")


def modules(package):
    """{dotted name: ast} of every module under `package`, recursively."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = (ast.parse(path.read_text()), path.name == "__init__.py")
    return found


def imported_modules(name, tree, is_package):
    """Every module an import statement names, anywhere in the file, with relative
    imports resolved against the module's own package."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[:len(here) - (node.level - 1)]
                base = ".".join([*anchor, *filter(None, [node.module])])
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def place(dotted):
    """"keras_adder.serving.rest" -> "serving"; "keras_adder.train" -> "train"."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None


def import_violations(package, order):
    """Imports against the rules: a wing importing a later wing, a command or argparse;
    a command importing another command."""
    top = package.name
    rank = {wing: index for index, wing in enumerate(order)}
    problems = []
    for name, (tree, is_package) in modules(package).items():
        source = place(name)
        targets = {place(target) for target in imported_modules(name, tree, is_package)
                   if target.split(".")[0] == top} - {None, source}
        if source in COMMANDS:
            problems += [f"{name} imports the command {target}"
                         for target in sorted(targets & COMMANDS)]
        elif source in rank:
            problems += [f"{name} imports {target}, which is not below {source}"
                         for target in sorted(targets) if rank.get(target, len(order)) > rank[source]]
            if "argparse" in imported_modules(name, tree, is_package):
                problems.append(f"{name} imports argparse")
    return problems


def root(word):
    while True:
        for suffix in SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[:-len(suffix)]
                break
        else:
            return word


def same_word_pairs(names):
    """Pairs of names that are forms of one word: the same root, or a compound whose
    first word is a form of a one-word name (demo / demo_app)."""
    names = sorted(names)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            first_a, first_b = a.split("_")[0], b.split("_")[0]
            if (a == b or root(a) == root(b)
                    or ("_" not in a and root(first_b) == root(a))
                    or ("_" not in b and root(first_a) == root(b))):
                pairs.append((a, b))
    return pairs


def module_names(package):
    """The stem of every module and the name of every wing, duplicates kept."""
    names = [path.stem for path in package.rglob("*.py") if path.stem != "__init__"]
    return names + [path.name for path in package.iterdir() if (path / "__init__.py").is_file()]


# --- The package ------------------------------------------------------------------------


def test_the_wings_in_design_md_are_the_package_folders():
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert set(wing_order()) == folders


def test_the_top_holds_commands_plumbing_and_wings_only():
    top = {path.stem for path in PACKAGE.glob("*.py")}
    assert top == COMMANDS | COMMAND_PLUMBING | {"__init__"}


def test_the_commands_are_the_top_modules_with_a_main():
    with_main = {name.split(".")[-1] for name, (tree, _) in modules(PACKAGE).items()
                 if any(isinstance(node, ast.FunctionDef) and node.name == "main"
                        for node in tree.body)}
    assert with_main == COMMANDS


def test_imports_run_one_way():
    assert import_violations(PACKAGE, wing_order()) == []


def test_no_two_names_are_forms_of_one_word():
    assert same_word_pairs(module_names(PACKAGE)) == []


def test_no_function_is_longer_than_60_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, (tree, _) in modules(PACKAGE).items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long


# --- The checks, on a package that breaks each rule ---------------------------------------

FIXTURE = {
    "__init__.py": "",
    "train.py": "from pkg import evaluate\nfrom pkg.core import base\n\ndef main(argv=None): ...\n",
    "evaluate.py": "from pkg.serving import api\n\ndef main(argv=None): ...\n",
    "core/__init__.py": "",
    "core/base.py": "import os\n",
    "core/upward.py": "from pkg.serving import api\n",
    "core/relative_up.py": "from ..serving import api\n",
    "core/parser.py": "import argparse\n",
    "serving/__init__.py": "from . import api\n",
    "serving/api.py": "from ..core import base\nfrom . import helpers\n",
    "serving/helpers.py": "",
    "serving/training.py": "",
    "serving/evaluate_app.py": "",
}


@pytest.fixture
def fixture_package(tmp_path):
    package = tmp_path / "pkg"
    for relative, text in FIXTURE.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    return package


def test_the_import_check_finds_each_kind_of_violation(fixture_package):
    assert sorted(import_violations(fixture_package, ["core", "serving"])) == [
        "pkg.core.parser imports argparse",
        "pkg.core.relative_up imports serving, which is not below core",
        "pkg.core.upward imports serving, which is not below core",
        "pkg.train imports the command evaluate",
    ]


def test_relative_imports_resolve_against_their_package(fixture_package):
    tree, is_package = modules(fixture_package)["pkg.serving.api"]
    assert {"pkg.core.base", "pkg.serving.helpers"} <= imported_modules("pkg.serving.api",
                                                                        tree, is_package)
    tree, is_package = modules(fixture_package)["pkg.serving"]
    assert "pkg.serving.api" in imported_modules("pkg.serving", tree, is_package)


def test_the_name_check_finds_forms_of_one_word(fixture_package):
    pairs = same_word_pairs(module_names(fixture_package))
    assert ("train", "training") in pairs and ("evaluate", "evaluate_app") in pairs
    assert same_word_pairs(["bench", "benchmark", "demo", "demo_app", "plots", "plot"]) == [
        ("bench", "benchmark"), ("demo", "demo_app"), ("plot", "plots")]
    assert same_word_pairs(["keras_file", "keras_path", "serving", "rest", "train"]) == []


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
