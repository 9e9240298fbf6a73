"""Read the hand-written tables of the docs, so that tests check the code against what
the docs promise (and not the docs against the code).

    | input | command | message |
    |-------|---------|---------|
    | zero epochs | `python -m keras_adder.train --epochs 0` | `epochs 0 must be at least 1` |

A cell may be wrapped in backticks (any number, as Markdown allows, with one space of
padding stripped); `\\|` stands for a `|` inside a cell. `<tmp>` in a message stands for
the folder a test works in.
"""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RELIABILITY = REPO / "docs" / "reliability.md"
BAD_INPUT_COLUMNS = ("input", "command", "message")
TMP = "<tmp>"


def _cells(line):
    """The cells of one Markdown table row, unescaped and unquoted."""
    parts = re.split(r"(?<!\\)\|", line.strip())
    if len(parts) < 3 or parts[0].strip() or parts[-1].strip():
        raise ValueError(f"not a table row: {line!r}")
    return [_unquote(part.strip().replace("\\|", "|")) for part in parts[1:-1]]


def _unquote(cell):
    ticks = re.fullmatch(r"(`+)(.*)\1", cell, flags=re.DOTALL)
    if not ticks:
        return cell
    inner = ticks.group(2)
    if inner.startswith(" ") and inner.endswith(" ") and inner.strip():
        inner = inner[1:-1]
    return inner


def read_table(path, columns):
    """The rows of the first table in `path` whose header is `columns`, as dicts."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if line.lstrip().startswith("|") and tuple(_cells(line)) == tuple(columns):
            rows = []
            for row in lines[number + 2:]:  # after the |---| line
                if not row.lstrip().startswith("|"):
                    break
                cells = _cells(row)
                if len(cells) != len(columns):
                    raise ValueError(f"{path}: row {row!r} has {len(cells)} cells, "
                                     f"not {len(columns)}")
                rows.append(dict(zip(columns, cells)))
            return rows
    raise ValueError(f"{path}: no table with the columns {' | '.join(columns)}")


def bad_input_messages(tmp, path=RELIABILITY):
    """{input: message} of the bad-input table, with `<tmp>` replaced by `tmp`."""
    messages = {}
    for row in read_table(path, BAD_INPUT_COLUMNS):
        if row["input"] in messages:
            raise ValueError(f"{path}: two rows named {row['input']!r}")
        messages[row["input"]] = row["message"].replace(TMP, str(tmp))
    return messages
