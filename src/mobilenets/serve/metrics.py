"""Prometheus metrics in the text exposition format (0.0.4), without a client library.

Counters, gauges and histograms with labels, one `Registry` per app (no process globals,
so several servers in one process, as in tests, keep their own numbers). Processes serving
one port (``serve --processes N``) share a directory through `SharedMetrics`: each writes
its numbers there, and a scrape of any of them answers the sum over all.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read when scraped (``fn``), or set."""

    kind = "gauge"

    def __init__(self, name: str, help: str, fn: Callable[[], float] | None = None) -> None:
        super().__init__(name, help)
        self._fn, self._value = fn, 0.0

    def set(self, value: float) -> None:
        self._value = value

    def render(self) -> list[str]:
        value = self._fn() if self._fn is not None else self._value
        return self.header() + [f"{self.name} {_num(value)}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float], labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], list[float]] = {}  # counts per bucket, then +Inf count, then sum

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            s = self._series.get(labels)
            if s is None:
                s = self._series[labels] = [0.0] * (len(self.buckets) + 2)
            for i, b in enumerate(self.buckets):
                if value <= b:
                    s[i] += 1
            s[-2] += 1
            s[-1] += value

    def count(self, *labels: str) -> float:
        s = self._series.get(labels)
        return s[-2] if s else 0.0

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for k, s in items:
            for b, c in [*zip(self.buckets, s), (math.inf, s[-2])]:
                le = 'le="' + _num(b) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, k, le)} {_num(c)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, k)} {_num(s[-2])}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, k)} {_num(s[-1])}")
        return lines


class Registry:
    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self.metrics for line in m.render()) + "\n"


class ServerMetrics:
    """What the server reports: requests by route and status, latency, batch sizes, queue depth."""

    def __init__(self, queue_depth: Callable[[], float], in_flight: Callable[[], float], max_batch: int) -> None:
        r = self.registry = Registry()
        self.requests = r.add(Counter("mobilenets_requests_total", "HTTP requests by route and status",
                                      ("route", "method", "status")))  # fmt: skip
        self.latency = r.add(Histogram("mobilenets_request_seconds", "HTTP request latency (first byte in to "
                                       "last byte out)", LATENCY_BUCKETS, ("route",)))  # fmt: skip
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, max_batch})
        self.batch_size = r.add(Histogram("mobilenets_batch_size", "images per predictor.run call",
                                          [s for s in sizes if s <= max_batch]))  # fmt: skip
        self.batch_seconds = r.add(Histogram("mobilenets_batch_seconds", "seconds per predictor.run call",
                                             LATENCY_BUCKETS))  # fmt: skip
        r.add(Gauge("mobilenets_queue_depth", "requests waiting for a batch", queue_depth))
        r.add(Gauge("mobilenets_in_flight", "inference requests admitted and not yet answered", in_flight))

    def render(self) -> str:
        return self.registry.render()

    def state(self) -> dict:
        """This process's numbers as plain data (JSON-able): counters, histogram series, gauge values."""
        out: dict = {"pid": os.getpid(), "counters": {}, "histograms": {}, "gauges": {}}
        for m in self.registry.metrics:
            if isinstance(m, Counter):
                with m._lock:
                    out["counters"][m.name] = [[list(k), v] for k, v in m._values.items()]
            elif isinstance(m, Histogram):
                with m._lock:
                    out["histograms"][m.name] = [[list(k), list(v)] for k, v in m._series.items()]
            elif isinstance(m, Gauge):
                out["gauges"][m.name] = m._fn() if m._fn is not None else m._value
        return out

    def render_sum(self, states: Sequence[dict]) -> str:
        """The exposition of ``states`` (from `state`) added up: same metrics, labels and buckets."""
        registry = Registry()
        for m in self.registry.metrics:
            if isinstance(m, Counter):
                total = registry.add(Counter(m.name, m.help, m.labelnames))
                for st in states:
                    for k, v in st["counters"].get(m.name, ()):
                        total.inc(*k, amount=v)
            elif isinstance(m, Histogram):
                total = registry.add(Histogram(m.name, m.help, m.buckets, m.labelnames))
                for st in states:
                    for k, series in st["histograms"].get(m.name, ()):
                        acc = total._series.setdefault(tuple(k), [0.0] * (len(m.buckets) + 2))
                        if len(series) == len(acc):
                            total._series[tuple(k)] = [a + b for a, b in zip(acc, series)]
            elif isinstance(m, Gauge):
                gauge = registry.add(Gauge(m.name, m.help))
                gauge.set(sum(st["gauges"].get(m.name, 0.0) for st in states))
        return registry.render()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedMetrics:
    """One process's `ServerMetrics` in a directory shared by the processes serving one port.

    `write` puts this process's numbers in ``<directory>/<pid>.json`` (atomically; the server
    calls it every second and at shutdown); `render` writes them and answers the sum over
    every file. A process that died keeps its counters and histograms in the sum, so totals
    never go down (as in the Prometheus client's multiprocess mode); its gauges drop out.
    """

    def __init__(self, metrics: ServerMetrics, directory: str | os.PathLike) -> None:
        self.metrics, self.directory = metrics, Path(directory)
        self.path = self.directory / f"{os.getpid()}.json"

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        data = json.dumps(self.metrics.state())
        try:
            tmp.write_text(data)
        except FileNotFoundError:  # the directory was removed under us (a /tmp cleaner): make it again
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp.write_text(data)
        os.replace(tmp, self.path)

    def render(self) -> str:
        self.write()
        states = []
        for f in sorted(self.directory.glob("*.json")):
            try:
                st = json.loads(f.read_text())
            except (OSError, ValueError):
                continue  # removed or being replaced this instant: the next scrape has it
            if not _alive(int(st.get("pid", 0))):
                st["gauges"] = {}
            states.append(st)
        return self.metrics.render_sum(states)
