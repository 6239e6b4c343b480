"""bench/frontend.py runs: the server's app and both references answer every request 200 and are measured."""

from __future__ import annotations

import benches

bench = benches.load_bench("frontend")


def test_the_three_apps_are_measured_side_by_side(capsys):
    assert bench.main(["--requests", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("  ")[0].strip(): line.split()[-5:] for line in lines[2:]}
    assert set(rows) == {"chronoserve", "starlette + pydantic", "raw ASGI"}
    for values in rows.values():
        assert all(float(v) > 0 for v in values)
    assert rows["raw ASGI"][2] == "1.0"  # the ratio column is relative to the raw route


async def test_a_call_reaches_the_route_and_the_starlette_reference_validates_the_body():
    import pytest
    from pydantic import ValidationError

    assert await bench.call(bench.raw_app()) == 200
    assert await bench.call(bench.starlette_app()) == 200
    with pytest.raises(ValidationError):  # the same work as the server's validation, not a pass-through
        await bench.call(bench.starlette_app(), body=b'{"city": 1}')
