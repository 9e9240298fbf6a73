"""docs/design.md's "Claims and their tests" table and docs/reliability.md's table of
hostile situations name tests that exist, so that a renamed or deleted test cannot leave
a claim pointing at nothing."""

import ast
import re

import pytest
from doc_table import RELIABILITY, REPO, read_table

DESIGN = REPO / "docs" / "design.md"


@pytest.mark.parametrize("page, columns, least", [
    (DESIGN, ("claim", "test"), 20),
    (RELIABILITY, ("situation", "what happens now", "test"), 20),
])
def test_every_test_a_claims_table_names_exists(page, columns, least):
    rows = read_table(page, columns)
    assert len(rows) > least
    missing = []
    for row in rows:
        for file, test in re.findall(r"(\w+\.py)(?:::(\w+))?", row["test"]):
            path = REPO / "tests" / file
            if not path.is_file():
                missing.append(file)
            elif test and test not in {node.name for node in ast.parse(path.read_text()).body
                                       if isinstance(node, ast.FunctionDef)}:
                missing.append(f"{file}::{test}")
    assert missing == []
