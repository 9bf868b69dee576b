"""One /metrics for all worker processes: each worker's Prometheus text, merged.

The rules, by metric type (what an operator's dashboards built on one process keep meaning):

- counters (and histograms, summaries): summed over workers. A worker that dies takes its
  counts with it, which would make the sum fall and Prometheus see a counter reset; so the
  supervisor keeps what it last read from each worker that ended and adds it for good. (What a
  worker counted after that last read, at most one refresh interval, is lost.) Counters'
  ``_created`` timestamps are dropped: they do not add up.
- gauges: summed over the workers running now (transactions in progress, open connections),
  except those where a sum is wrong: ``sbc_ready`` is 1 only when every worker is ready.
- a few families are also given per worker, with a ``worker`` label under a name of their own
  (:data:`PER_WORKER`), so that the summed series keep their meaning.
- the state of Microsoft's proxies (``sbc_teams_proxy_up``, ``sbc_teams_proxy_rtt_seconds``)
  is neither a sum nor a minimum: the supervisor sets them from its combined /teams view
  (:meth:`Aggregator.override`, ``teams_sbc.workers.teams``: the freshest answer decides), and
  each worker's own ``sbc_teams_proxy_up`` is given as ``sbc_worker_teams_proxy_up``.

Pure: text in, metric families out; the supervisor does the reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

#: Families that are also exposed per worker: name -> (per-worker name, what it adds to HELP).
PER_WORKER: Mapping[str, str] = {
    "sbc_sip_requests": "sbc_worker_sip_requests",
    "sbc_sip_transactions": "sbc_worker_sip_transactions",
    "sbc_ready": "sbc_worker_ready",
    "sbc_teams_proxy_up": "sbc_worker_teams_proxy_up",
}
#: Gauges whose merged value is the minimum over the worker seats (0 for a seat with no worker).
ALL_OF: frozenset[str] = frozenset({"sbc_ready"})
#: Metric types whose samples only grow and so add up across a worker's lifetimes.
ADDITIVE = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

#: A sample's identity: its name (``_total``, ``_bucket``... included) and sorted labels.
Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class _Family:
    name: str
    type: str
    documentation: str


@dataclass
class _Reading:
    """One worker process's last /metrics: family name -> sample key -> value."""

    generation: int
    families: dict[str, dict[Key, float]] = field(default_factory=dict)


def parse(text: str) -> tuple[list[_Family], dict[str, dict[Key, float]]]:
    """A worker's /metrics text as its families and their samples (``_created`` dropped)."""
    parsed = list(text_string_to_metric_families(text))
    counters = {f.name for f in parsed if f.type in ADDITIVE}
    families: list[_Family] = []
    samples: dict[str, dict[Key, float]] = {}
    for family in parsed:
        if family.name.endswith("_created") and family.name[: -len("_created")] in counters:
            continue  # a counter's creation time (a gauge of its own in the text format)
        families.append(_Family(family.name, family.type, family.documentation))
        values = samples.setdefault(family.name, {})
        for s in family.samples:
            if s.name.endswith("_created") and family.type in ADDITIVE:
                continue
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


class Aggregator:
    """Keeps each worker seat's last reading and what ended workers counted; merges them."""

    def __init__(self, seats: int) -> None:
        self.seats = seats
        self._families: dict[str, _Family] = {}
        self._live: dict[int, _Reading] = {}
        #: Counter samples of workers that have ended, summed.
        self._retired: dict[str, dict[Key, float]] = {}
        #: The latest generation retired, by seat.
        self._ended: dict[int, int] = {}
        #: Families whose merged samples are set from outside (the combined Teams view).
        self._overrides: dict[str, dict[Key, float]] = {}

    def override(self, name: str, samples: Mapping[tuple[str, str], float]) -> None:
        """Expose ``name`` (a family the workers report) with these samples instead of
        merging the workers' values: by (label name, label value) of a single label."""
        self._overrides[name] = {
            (name, ((label, value),)): number for (label, value), number in samples.items()
        }

    def update(self, seat: int, generation: int, text: str) -> None:
        """A reading of ``seat``'s worker ``generation`` (its n-th process). A reading from a
        process already retired is ignored (it raced with its end)."""
        current = self._live.get(seat)
        if current is not None and current.generation > generation:
            return
        if current is None and generation <= self._ended.get(seat, -1):
            return
        families, samples = parse(text)
        for family in families:
            self._families.setdefault(family.name, family)
        self._live[seat] = _Reading(generation, samples)

    def retire(self, seat: int, generation: int) -> None:
        """``seat``'s worker ``generation`` has ended: keep its counts, forget its gauges."""
        self._ended[seat] = max(generation, self._ended.get(seat, -1))
        reading = self._live.get(seat)
        if reading is None or reading.generation > generation:
            return
        del self._live[seat]
        for name, values in reading.families.items():
            if self._families[name].type not in ADDITIVE:
                continue
            kept = self._retired.setdefault(name, {})
            for key, value in values.items():
                kept[key] = kept.get(key, 0.0) + value

    def live_seats(self) -> list[int]:
        return sorted(self._live)

    def families(self) -> list[Metric]:
        """The merged families, then the per-worker ones, in a stable order."""
        out: list[Metric] = []
        for name in sorted(self._families):
            family = self._families[name]
            metric = Metric(name, family.documentation, family.type)
            for (sample, labels), value in sorted(self._merged(family).items()):
                metric.add_sample(sample, dict(labels), value)
            out.append(metric)
        for name, per_name in PER_WORKER.items():
            known = self._families.get(name)
            if known is None:
                continue
            metric = Metric(per_name, f"{known.documentation} Per worker process.", known.type)
            for seat in sorted(self._live):
                samples = self._live[seat].families.get(name, {})
                for (sample, labels), value in sorted(samples.items()):
                    per_sample = per_name + sample[len(name) :]
                    metric.add_sample(per_sample, {**dict(labels), "worker": str(seat)}, value)
            out.append(metric)
        return out

    def _merged(self, family: _Family) -> dict[Key, float]:
        if family.name in self._overrides:
            return self._overrides[family.name]
        readings = [r.families.get(family.name, {}) for r in self._live.values()]
        if family.name in ALL_OF:
            keys = {key for values in readings for key in values}
            if len(readings) < self.seats:  # a seat without a worker right now
                return dict.fromkeys(keys, 0.0)
            return {key: min(values.get(key, 0.0) for values in readings) for key in keys}
        merged: dict[Key, float] = {}
        sources: Iterable[dict[Key, float]] = readings
        if family.type in ADDITIVE:
            sources = [*readings, self._retired.get(family.name, {})]
        for values in sources:
            for key, value in values.items():
                merged[key] = merged.get(key, 0.0) + value
        return merged
