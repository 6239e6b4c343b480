"""The Python blocks of the docs run as written (the README's and the policy guide's)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def blocks(doc: str) -> list[str]:
    return BLOCK.findall((ROOT / doc).read_text())


@pytest.mark.parametrize("doc", ["docs/policies.md", "docs/testing.md", "docs/costs.md", "docs/deadlines.md"])
def test_doc_blocks_run(doc):
    namespace: dict[str, object] = {"__name__": f"doc_{Path(doc).stem}"}
    found = blocks(doc)
    assert found, f"{doc} has no python blocks"
    for code in found:
        exec(compile(code, doc, "exec"), namespace)
    for name, value in list(namespace.items()):
        if name.startswith("test_") and asyncio.iscoroutinefunction(value):
            asyncio.run(value())


@pytest.mark.torch
def test_readme_in_process_example_runs(capsys):
    pytest.importorskip("torch")
    (code,) = [b for b in blocks("README.md") if "async with Engine" in b]
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "Timings(" in out
