"""The benchmark script runs end to end (tiny sizes, no timing assertions)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
APIS = ("openai_images", "openai_responses", "openrouter_chat")


@pytest.mark.timeout(180)
def test_benchmarks_quick_run(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = proc.stdout.splitlines()[0]
    assert all(f" {col} |" in header for col in ("this client", "baseline", "ratio", "spread of the ratio", "goal"))
    assert header.rstrip().endswith("verdict") and "machine:" in proc.stdout
    assert "goals: " in proc.stdout
    result = json.loads(out.read_text())
    rows = result["rows"]
    names = [r["name"] for r in rows]

    def having(*parts):
        return [r for r in rows if all(p in r["name"] for p in parts)]

    for section in ("1. ", "2. fan-out", "3. ", "4. notebook bytes/image", "5. first pixels", "6. kernel RSS",
                    "6. %%imagegen -n 4"):
        assert any(n.startswith(section) for n in names), (section, names)
    # issue 12: every format in the per-request rows (8 kB to PIL, and the medium answer to bytes), the
    # peak-RSS row per format, the Pillow-open count, the default-settings fan-out, the concurrency row
    for api in APIS:
        assert having("1. ", "KB answer -> PIL image", api, "vs bare aiohttp"), api
        assert having("1. ", "PNG -> bytes", api, "vs bare aiohttp"), api
        assert having("1. ", "PNG -> PIL image", api, "vs bare aiohttp"), api
        assert having("peak RSS, generate() + .image", api), api
    assert having("Pillow opens per image")[0]["ours"] >= 1
    assert having("fan-out", "DEFAULT settings") and having("concurrent calls", "DEFAULT client")

    for r in rows:
        if r["name"].startswith("6. kernel RSS"):   # a growth: may be 0 or negative on a tiny run
            assert math.isfinite(r["ours"]) and r["base"] > 0, r
        else:
            assert r["ours"] > 0 and r["base"] > 0, r
        # every ratio comes with its spread, every goal with a verdict
        assert r["spread_kind"] == "exact" or (r["spread"] and r["spread"][0] <= r["spread"][1]), r
        if r["goal"] and not r["name"].startswith("6. kernel RSS"):
            assert r["met"] in (True, False), r
    assert result["machine"]["cpus"] >= 1
    # the fan-out runs its calls concurrently even at tiny sizes (4 calls of 50 ms: not 200 ms)
    fan = [r for r in rows if r["name"].startswith("2. fan-out")]
    assert all(r["ratio"] < 3 for r in fan), fan
