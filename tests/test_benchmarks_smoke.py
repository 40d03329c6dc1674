"""The benchmark script runs end to end (tiny sizes, no timing assertions)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)
def test_benchmarks_quick_run(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| this client |" in proc.stdout and "machine:" in proc.stdout
    result = json.loads(out.read_text())
    names = [r["name"] for r in result["rows"]]
    for section in ("1. overhead", "2. fan-out", "3. ", "4. notebook bytes/image"):
        assert any(n.startswith(section) for n in names), (section, names)
    for r in result["rows"]:
        assert r["ours"] > 0 and r["base"] > 0, r
    assert result["machine"]["cpus"] >= 1
    # the fan-out runs its calls concurrently even at tiny sizes (4 calls of 50 ms: not 200 ms)
    fan = [r for r in result["rows"] if r["name"].startswith("2. fan-out")]
    assert all(r["ratio"] < 3 for r in fan), fan
