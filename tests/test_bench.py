"""Bench results, pick and the Pareto plot."""

from __future__ import annotations

import pytest

from mobilenets.bench import BenchRow, load_results, pareto_front, pareto_plot, pick, run_bench, save_results
from mobilenets.cli import main
from mobilenets.errors import MobilenetsError


def row(model: str, ms: float, top1: float, backend: str = "litert", int8: bool = False, threads: int = 1) -> BenchRow:
    return BenchRow(model=model, alpha=1.0, resolution=224, backend=backend, engine=backend, int8=int8,
                    threads=threads, batch=1, median_ms=ms, p90_ms=ms * 1.1, runs=10, top1=top1, machine="test")  # fmt: skip


ROWS = [row("a", 2.0, 50.0), row("b", 4.0, 60.0), row("c", 6.0, 65.0), row("d", 9.0, 70.0),
        row("c", 5.0, 65.0, backend="onnxruntime"), row("e", 3.0, 55.0, int8=True)]  # fmt: skip


def test_pick_best_fit_and_neighbours():
    choice = pick(ROWS, 5.5)
    assert (choice.best.model, choice.best.backend) == ("c", "onnxruntime")  # each config at its fastest backend
    assert choice.faster.model == "b" and choice.slower.model == "d"
    assert pick(ROWS, 100).best.model == "d" and pick(ROWS, 100).slower is None
    assert pick(ROWS, 5.5, backend="litert").best.model == "b"
    assert pick(ROWS, 5.5, int8=True).best.model == "e"
    nothing = pick(ROWS, 1.0)
    assert nothing.best is None and nothing.slower.model == "a"
    with pytest.raises(MobilenetsError, match="no measured configs"):
        pick(ROWS, 5.0, backend="openvino")


def test_pick_prefers_this_machines_rows():
    from dataclasses import replace

    from mobilenets.utils import machine_id

    here = [replace(r, machine=machine_id()) for r in ROWS[:2]]  # a (2 ms) and b (4 ms) measured here
    assert pick(ROWS + here, 100).best.model == "b"  # d and c are other machines' rows
    assert pick(ROWS, 100).best.model == "d"  # nothing from here: all rows


def test_pareto_front():
    assert [r.model for r in pareto_front(ROWS)] == ["a", "e", "b", "c", "d"]


def test_results_merge_and_pick_cli(tmp_path, capsys):
    path = tmp_path / "bench.json"
    save_results(ROWS[:3], path)
    save_results([row("a", 1.5, 50.0)] + ROWS[3:], path)
    rows = load_results(path)
    assert len(rows) == 6 and [r.median_ms for r in rows if r.model == "a"] == [1.5]
    assert main(["pick", "--latency-ms", "5", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pick:        c fp32 on onnxruntime" in out and "published top-1 65.0%" in out and "5.00 ms" in out
    assert main(["pick", "--latency-ms", "1", "--results", str(path)]) == 2
    assert "nothing measured fits 1 ms" in capsys.readouterr().err
    assert main(["pick", "--latency-ms", "5", "--results", str(tmp_path / "none.json")]) == 2
    assert "run `mobilenets bench` first" in capsys.readouterr().err


def test_pareto_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the [plot] extra")
    out = pareto_plot(ROWS, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_run_bench_small(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path))
    rows = run_bench(["mobilenet_v1_0.25_128"], ["torch", "onnxruntime"], [False], [1], runs=3)
    assert {r.backend for r in rows} == {"torch", "onnxruntime"}
    assert all(r.median_ms > 0 and r.p90_ms >= r.median_ms and r.top1 == 41.5 for r in rows)
