"""Issue 18's bad-input table (tests/bad_input_cases.py): every bad argument gets a
clear error of the right type that names it, every valid edge input is accepted.
``reports/reliability.md`` lists the same cases with their outcomes."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from bad_input_cases import CASES, classify

REPORT = Path(__file__).resolve().parents[1] / "reports" / "reliability.md"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome, detail = classify(case, tmp_path)
    assert outcome == "A", detail


def test_the_table_is_large_and_its_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert len(ids) >= 300


def test_the_reliability_report_lists_every_case():
    listed = set(re.findall(r"^\| `([^`]+)` \|", REPORT.read_text(), flags=re.M))
    assert listed == {c.id for c in CASES}, "run scripts/reliability_report.py"
