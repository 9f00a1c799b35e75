"""The runner's Prometheus metrics, read at scrape time from the running agents.

    comfyfleet_runner_scheduler_connected{runner}   1 while the session with the scheduler is up
    comfyfleet_runner_comfyui_connected{runner}     1 while ComfyUI's websocket is open
    comfyfleet_runner_slots{runner}                 assignments it runs at once
    comfyfleet_runner_in_flight{runner}             assignments it holds now
    comfyfleet_runner_draining{runner}              1 while it takes no new work

`runner` is the runner's name. One process runs one runner, or in pool mode one per runner
registered through the API (services/runner/pool.py); every one of them is a sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from services.runner.server import RunningRunner


class RunnerCollector(Collector):
    """Samples of the runners `runners()` returns at the moment of the scrape."""

    def __init__(self, runners: Callable[[], Iterable[RunningRunner]]) -> None:
        self._runners = runners

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "scheduler_connected": GaugeMetricFamily("comfyfleet_runner_scheduler_connected",
                                                     "1 while the session with the scheduler is up", labels=["runner"]),
            "comfyui_connected": GaugeMetricFamily("comfyfleet_runner_comfyui_connected",
                                                   "1 while ComfyUI's websocket is open", labels=["runner"]),
            "slots": GaugeMetricFamily("comfyfleet_runner_slots", "Assignments run at once", labels=["runner"]),
            "in_flight": GaugeMetricFamily("comfyfleet_runner_in_flight", "Assignments held now", labels=["runner"]),
            "draining": GaugeMetricFamily("comfyfleet_runner_draining", "1 while it takes no new work",
                                          labels=["runner"]),
        }
        for runner in self._runners():
            name = [runner.settings.name]
            families["scheduler_connected"].add_metric(name, float(runner.session.connected.is_set()))
            families["comfyui_connected"].add_metric(name, float(runner.feed.connected))
            families["slots"].add_metric(name, float(runner.settings.slots))
            families["in_flight"].add_metric(name, float(runner.agent.in_flight()))
            families["draining"].add_metric(name, float(runner.agent.draining))
        yield from families.values()
