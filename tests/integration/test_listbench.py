"""The listing benchmark runs (small here; `python -m sensortasks.tools.listbench` for 1,000,000 rows)."""

from __future__ import annotations

from sensortasks.tools.listbench import run


async def test_listbench_reports_every_query() -> None:
    lines = await run(5_000, samples=5, say=lambda _: None)
    assert lines[0].startswith("5,000 tasks inserted")
    assert any(line.startswith("customer + status=Error") for line in lines)
    assert lines[-1].startswith("export of Pending")
