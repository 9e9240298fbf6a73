"""docs/design.md's "Claims and their tests" table names tests that exist, so that a
renamed or deleted test cannot leave a claim pointing at nothing."""

import ast
import re

from doc_table import REPO, read_table

DESIGN = REPO / "docs" / "design.md"


def test_every_test_the_claims_table_names_exists():
    rows = read_table(DESIGN, ("claim", "test"))
    assert len(rows) > 20
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
