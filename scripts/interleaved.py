"""Shared by the step benchmarks: time several training setups in turns, so a machine whose speed drifts (another
job, thermal) costs them alike."""

from __future__ import annotations

import statistics
import time


def median_step_seconds(steps: dict, rounds: int, per_round: int) -> dict:
    """{name: median seconds} of `steps[name]()` (one training step each), the setups taking turns: `rounds` rounds
    of `per_round` calls per setup."""
    times: dict = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(per_round):
                started = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}
