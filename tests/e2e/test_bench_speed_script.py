"""The S1 script's contract, on a tiny shape (the benchmark itself is a script, not a
test): every variant and the naive reference timed and measured, the JSON it writes, and
``full_smart/plain = X.XX`` as its last line, computed from the timings it reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_speed.py"


def test_bench_speed_prints_every_variant_and_ends_with_the_ratio(tmp_path):
    report_path = tmp_path / "s1.json"
    # A path that does not exist: the script times a randomly initialised encoder of the
    # same architecture, so the test needs neither ../shared nor the hub.
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--encoder", str(tmp_path / "no-such-encoder"),
         "--num-hidden-layers", "1", "--shapes", "4x16", "--steps", "2", "--warmup", "1",
         "--json", str(report_path)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    last = re.fullmatch(r"full_smart/plain = (\d+\.\d\d)", lines[-1])
    assert last, f"last line: {lines[-1]!r}"

    report = json.loads(report_path.read_text())["4x16"]
    variants = ("plain", "adversarial", "bregman", "full_smart", "naive_adversarial", "naive_full")
    for variant in variants:
        assert report["median_s"][variant] > 0
        assert len(report["times_s"][variant]) == 2
        assert report["peak_extra_bytes"][variant] > 0
        assert any(line.split()[0] == variant for line in lines if line.strip()), f"no row for {variant}"
    ratio = report["median_s"]["full_smart"] / report["median_s"]["plain"]
    assert last.group(1) == f"{ratio:.2f}"
    assert set(report["floor_x_plain"]) == {"adversarial", "full_smart", "bregman"}
