"""The README and docs/ say what the code does.

README.md stays short and links every docs page; docs/performance.md is a short reference
page that carries every figure of the README's results table beside its command; every
relative link and anchor in README and docs/ resolves; the README's layout tree names
exactly the commands and wings of keras_adder/; no page carries a commit hash; every flag a
page passes to `python -m keras_adder.<command>` exists. (tests/test_bad_inputs.py reads its
expected messages from docs/reliability.md's bad-input table.)
"""

import collections
import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PACKAGE = REPO / "keras_adder"
PERFORMANCE = DOCS / "performance.md"
MAX_README_LINES = 250
MAX_PERFORMANCE_LINES = 300
REQUIRED_PAGES = ("design.md", "serving.md", "reliability.md", "scaling.md", "performance.md",
                  "experiments.md")
COMMANDS = ("train", "evaluate", "predict", "export", "bench", "demo")

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
# A commit hash: 7 to 40 lowercase hex characters standing alone, with a digit and a letter.
COMMIT_HASH = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
COMMAND_LINE = re.compile(r"python -m keras_adder\.(\w+)([^`\n]*)")
MAKE_LINE = re.compile(r"make (train|bench) ARGS=(\"[^\"]*\"|\S+)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
# A figure: 28,134 or 99.68 or 1337, not a part of a longer number.
FIGURE = re.compile(r"(?<![\d.,])\d+(?:,\d{3})*(?:\.\d+)?(?![\d])")


def pages():
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text):
    """The text without its fenced code blocks."""
    return FENCE.sub("", text)


def anchors(page):
    """GitHub's anchors for the headings of a markdown page."""
    headings = re.findall(r"^#{1,6} (.+)$", prose(page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in headings}


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= MAX_README_LINES


def test_performance_page_is_short():
    assert len(PERFORMANCE.read_text().splitlines()) <= MAX_PERFORMANCE_LINES


def table_rows(text):
    """The cells of every body row of the Markdown tables in the text."""
    rows = []
    for line in prose(text).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and not all(set(cell) <= set("-: ") for cell in cells):
            rows.append(cells)
    return rows


def results_rows():
    """The README's results table, without its header: one list of cells per row."""
    section = README.read_text().split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    return table_rows(section)[1:]


def test_readme_results_table_is_found():
    rows = results_rows()
    assert len(rows) >= 4 and all(len(row) == len(rows[0]) for row in rows)


@pytest.mark.parametrize("row", results_rows(), ids=lambda row: row[0].strip("*`"))
def test_readme_results_are_on_the_reference_page_with_their_command(row):
    """Some row of docs/performance.md holds the README row's command (its last cell) and
    every figure of the README row, each as often."""
    command, figures = row[-1], collections.Counter(FIGURE.findall(" ".join(row)))
    candidates = [collections.Counter(FIGURE.findall(" ".join(cells)))
                  for cells in table_rows(PERFORMANCE.read_text()) if cells[-1] == command]
    assert candidates, f"performance.md has no table row with the command {command}"
    missing = min((figures - found for found in candidates), key=len)
    assert not missing, f"performance.md's row for {command} lacks {sorted(missing.elements())}"


def test_readme_links_every_docs_page():
    linked = {target.split("#")[0] for target in LINK.findall(prose(README.read_text()))}
    missing = [page for page in REQUIRED_PAGES if f"docs/{page}" not in linked]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_relative_links_resolve(page):
    for target in LINK.findall(prose(page.read_text())):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path) if path else page
        assert linked.exists(), f"{page.name} links {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name} links {target}: no such heading"


def layout_tree():
    """The names in the README's "## Layout" tree: top-level .py files and wing folders."""
    section = README.read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    tree = re.search(r"^```\nkeras_adder/\n(.*?)^```", section, re.M | re.S).group(1)
    return re.findall(r"\b([a-z_]+\.py|[a-z_]+/)", tree)


def test_readme_layout_tree_names_every_command_and_wing():
    listed = layout_tree()
    assert len(listed) == len(set(listed)), "a name is listed twice"
    actual = [path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py"]
    actual += [f"{path.name}/" for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()]
    assert sorted(listed) == sorted(actual)


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_no_commit_hashes(page):
    assert not COMMIT_HASH.findall(page.read_text())


@pytest.fixture(scope="module")
def help_texts():
    """Each command's --help, which imports no TensorFlow (tests/test_layout.py)."""
    texts = {}
    for command in COMMANDS:
        output = io.StringIO()
        with contextlib.redirect_stdout(output), pytest.raises(SystemExit):
            importlib.import_module(f"keras_adder.{command}").main(["--help"])
        texts[command] = output.getvalue()
    return texts


def commands_in(text):
    """(command, flags) for every `python -m keras_adder.<command> ...` and
    `make train|bench ARGS=...` in the text; a shell comment ends a command."""
    text = text.replace("\\\n", " ")
    found = [(command, rest.split(" #")[0]) for command, rest in COMMAND_LINE.findall(text)]
    found += MAKE_LINE.findall(text)
    return [(command, FLAG.findall(rest)) for command, rest in found]


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_commands_use_existing_flags(page, help_texts):
    for command, flags in commands_in(page.read_text()):
        assert command in COMMANDS, f"{page.name}: no command keras_adder.{command}"
        unknown = [flag for flag in flags if flag not in FLAG.findall(help_texts[command])]
        assert not unknown, f"{page.name}: {command} has no {unknown}"
