"""cgbench load-ab: two servers, alternating rounds, medians and ratios."""
from __future__ import annotations

import threading

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.errors import BenchError
from bench.load.ab import Scenario, parse_server, run_ab
from serve.testing import FakeGenerator, LiveServer


def test_two_servers_alternate_and_the_ratios_come_from_the_medians(tmp_path):
    seen = []
    lock = threading.Lock()

    class Counting(FakeGenerator):
        def __init__(self, label, **kw):
            super().__init__(**kw)
            self.label = label

        def request(self, *args, **kwargs):
            with lock:
                seen.append(self.label)
            return super().request(*args, **kwargs)

    fast, slow = Counting("fast", context_length=512), Counting("slow", context_length=512,
                                                             step_s=0.01)
    with LiveServer(fast) as a, LiveServer(slow, max_batch=1) as b:
        table = run_ab([("fast", a.url), ("slow", b.url)],
                       [Scenario("s", 2, 4, 8, 6)], 2, tmp_path, log=lambda line: None)
    # round 1: fast then slow; round 2: slow then fast (4 requests each)
    assert seen == ["fast"] * 4 + ["slow"] * 8 + ["fast"] * 4
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert list(rounds["server"]) == ["fast", "slow", "slow", "fast"]
    med = rounds.groupby("server")["output_tokens_per_s"].median()
    ratio = table.loc["s", ("output_tokens_per_s", "fast/slow")]
    assert ratio == pytest.approx(med["fast"] / med["slow"], rel=1e-3)  # the CSV is rounded
    assert ratio > 1  # the server without per-step sleeps makes tokens faster
    for name in ("summary.csv", "summary.json", "env.json"):
        assert (tmp_path / name).is_file()


def test_bad_options_are_one_clear_line():
    with pytest.raises(BenchError, match="NAME:CONCURRENCY"):
        Scenario.parse("decode:8:x:128:64")
    with pytest.raises(BenchError, match="LABEL=URL"):
        parse_server("http://127.0.0.1:1")
    out = CliRunner().invoke(main, ["load-ab", "--server", "a=http://127.0.0.1:1",
                                    "--scenario", "d:1:1:8:4"])
    assert out.exit_code == 1 and "give --server twice" in out.output
