"""``python -m rlbuf.bench --report``: the bounded run, the table with the device name and the
JSON report (a quick run of one small module; the full report is for a quiet or lent machine)."""

import json

from rlbuf.bench import __main__ as bench


def test_report_writes_rows_device_and_module_status(tmp_path, capsys, monkeypatch):
    from rlbuf.bench import slice_loop

    # CI's smoke form of the quick report: one small capacity, a short loop
    monkeypatch.setattr(slice_loop, "QUICK_SIZES", (2_000,))
    monkeypatch.setattr(slice_loop, "ITERS", 10)
    path = tmp_path / "report.json"
    bench.main(["--report", str(path), "--quick", "--only", "slice_loop"])
    out = capsys.readouterr().out
    assert "Device: " in out and "| slice loop |" in out
    report = json.loads(path.read_text())
    assert report["backend"] == "cpu" and report["quick"] is True and report["device"]
    assert report["modules"]["slice_loop"]["status"] == "ok"
    rows = report["rows"]
    assert {r["group"] for r in rows} == {"slice loop"} and len(rows) == 1  # one row per capacity
    for r in rows:
        assert r["rlbuf_us"] > 0 and (r["ref_us"] is None or r["ratio"] == r["rlbuf_us"] / r["ref_us"])


def test_report_budget_skips_the_remaining_modules():
    rows, modules = bench.run_modules(["slice_loop", "buffer"], quick=True, budget_s=-1.0)
    assert rows == [] and all(m["status"].startswith("skipped") for m in modules.values())
