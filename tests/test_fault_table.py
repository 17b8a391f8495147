"""tests/README.md's fault table stays in step with the tests: every test it names exists."""

from __future__ import annotations

import ast
import re

from conftest import REPO

ROW = re.compile(r"^\| (\d+) \| (.+?) \| (.+?) \| `(test_\w+\.py)::(test_\w+)` \|$", re.M)


def test_every_test_the_fault_table_names_exists():
    table = (REPO / "tests" / "README.md").read_text()
    rows = ROW.findall(table)
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))  # numbered, none lost to a typo
    assert len(rows) == table.count("\n| ") - 1  # every row parsed (the header's separator excluded)
    for _, fault, _, module, name in rows:
        tree = ast.parse((REPO / "tests" / module).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in defined, f"tests/README.md: {fault!r} names {module}::{name}, which does not exist"
    assert len({r[1] for r in rows}) == len(rows)  # each fault once
    assert f"**{len(rows)} distinct faults.**" in table  # the count the README states is the table's
