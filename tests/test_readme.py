"""The README quotes the numbers that ``benchmarks/readme_numbers.py`` measured last."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_readme_quotes_the_measured_demo_numbers():
    record = json.loads((ROOT / "reports" / "readme_numbers.json").read_text())
    readme = _flat((ROOT / "README.md").read_text())
    missing = {k: v for k, v in record["numbers"].items() if _flat(v) not in readme}
    assert not missing, (
        f"README.md does not quote these numbers of `{record['command']}` "
        f"(python benchmarks/readme_numbers.py, {record['machine']['date']}): {missing}")
    assert record["command"] == "aniso-gp demo"  # a full run, with its wall time
    assert "python benchmarks/readme_numbers.py" in readme


def test_readme_starts_with_the_two_commands():
    head = (ROOT / "README.md").read_text().split("## ", 1)[0]
    assert "make demo" in head and "make test" in head
