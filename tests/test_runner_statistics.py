"""The device runner's statistics and timing schedule (runtime/device_runner.py): the interval of a median that
covers whatever the distribution, ABBA rounds, fresh sessions per epoch, exact run counts, and peak memory that a
parent's never leaks into."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgepress.runtime import device_runner as runner
from tests.test_bench_cli import matmul_model

DISTRIBUTIONS = {
    # the shapes latencies take: skewed, heavy-tailed, two modes (a neighbour that comes and goes)
    "lognormal": (lambda rng, n: rng.lognormal(0.0, 0.5, n), float(np.exp(0.0))),
    "exponential": (lambda rng, n: rng.exponential(1.0, n), float(np.log(2.0))),
    "pareto": (lambda rng, n: rng.pareto(1.5, n) + 1.0, float(2 ** (1 / 1.5))),
    "bimodal": (lambda rng, n: np.where(rng.random(n) < 0.4, rng.normal(1.0, 0.05, n), rng.normal(3.0, 0.05, n)), None),
}


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("count", [6, 12, 40])
def test_the_median_interval_covers_at_least_95_percent_whatever_the_distribution(name, count):
    draw, median = DISTRIBUTIONS[name]
    rng = np.random.default_rng(count)
    if median is None:  # the bimodal's median, from a large sample
        median = float(np.median(draw(rng, 2_000_000)))
    tries = 3000
    held = sum(low <= median <= high for low, high in (runner.median_ci95(np, draw(rng, count)) for _ in range(tries)))
    # The sign-test interval's coverage is at least 95 % for any continuous distribution (96.9 % at 6, 96.1 % at
    # 12, 96.2 % at 40); 3000 tries put the observed share within about 0.8 points of it.
    assert held / tries >= 0.945


def test_the_median_interval_narrows_with_more_values_and_holds_the_median():
    rng = np.random.default_rng(0)
    values = rng.lognormal(0.0, 0.3, 400)
    widths = []
    for count in (12, 100, 400):
        low, high = runner.median_ci95(np, values[:count])
        assert low <= np.median(values[:count]) <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] > 0


def test_rounds_alternate_abba_and_baab_so_each_model_follows_the_other_equally():
    sequence = [index for round_index in range(4) for index in runner.round_order(2, round_index)]
    assert sequence[:8] == [0, 1, 1, 0, 1, 0, 0, 1]
    switches_into = {0: 0, 1: 0}
    for before, now in zip([1] + sequence, sequence):  # the warm-up before ends with the other model
        if before != now:
            switches_into[now] += 1
    assert switches_into[0] == switches_into[1]
    assert runner.round_order(1, 3) == [0]


class _CountingSession:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def run(self, _outputs, _feed):
        self.log.append(self.name)


@pytest.mark.parametrize("runs,epochs", [(200, 12), (5, 12), (203, 6), (1000, 12)])
def test_every_model_gets_exactly_the_runs_asked_for_spread_over_fresh_sessions(runs, epochs):
    log: list = []
    opened = []

    def open_pair():
        pair = [_CountingSession(f"a{len(opened)}", log), _CountingSession(f"b{len(opened)}", log)]
        opened.append(pair)
        return pair, [{}, {}]

    found = runner.timed_epochs(open_pair, models=2, runs=runs, duration_s=0.0, round_runs=3, epochs=epochs,
                                epoch_warmup_runs=2, refill_runs=1)
    assert len(found) == 2 and len(found[0]) == len(found[1]) == min(epochs, runs)
    assert [sum(map(len, model)) for model in found] == [runs, runs]
    assert len(opened) == min(epochs, runs)  # every epoch on sessions of its own
    assert all(len(a) == len(b) for a, b in zip(*found))


def test_a_parents_memory_never_counts_as_the_models(tmp_path):
    """A runner started by a process holding 400 MB reports its own peak: Linux's ru_maxrss would carry the
    parent's across fork and exec (a 31 KB model read 460 MB inside `edgepress run`)."""
    model = matmul_model(tmp_path / "small.onnx", width=64)
    parent = (
        "import json, subprocess, sys\n"
        "import numpy as np\n"
        "held = np.ones(400 * 2**20 // 8)\n"
        f"done = subprocess.run([sys.executable, {str(runner.__file__)!r}, 'bench', {str(model)!r}, '--runs', '20'],\n"
        "                      capture_output=True, text=True, check=True)\n"
        "print(done.stdout.strip().splitlines()[-1])\n")
    result = json.loads(subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                                       check=True).stdout)
    assert result["memory_method"] == "VmHWM"  # Linux
    assert result["runner_baseline_bytes"] < result["peak_memory_bytes"] < 200 * 2**20
