"""Real updates through faulty links converge: one pass of each of scripts/powercut's network faults.

A fault proxy sits in front of the gateway and one in front of the registry (the Targets' app
URIs name it); each update runs with one fault on (connections reset mid-blob or at random,
stalls past the read timeout, refused connections, a slow line, a burst of 503s from the
factory), and gets up to three boots, as a daemon's next rounds would give it. Each fault must be
seen to fire (the proxies' counters: resets, stalls, refused connections, rate-limited slices;
the factory's 503s), and the device judged converged by the world (powercut's invariant 1).
`scripts/powercut --network --cuts N` runs many more.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "lib"))
import powercut  # noqa: E402
from support import clean_engine  # noqa: E402

pytestmark = [pytest.mark.factory, pytest.mark.docker, pytest.mark.long, pytest.mark.timeout(600)]


def test_an_update_through_each_kind_of_network_fault_converges_at_little_extra_cost(factory, engine, tmp_path: Path) -> None:
    with powercut.faulty_links(factory.home, seed=5, lifetime=600, offset=20) as (proxies, uris):
        lab = powercut.Lab(factory.home, factory.info, engine, tmp_path, tmp_path, uris, offset=20)
        try:
            trips = powercut.run_network(lab, [powercut.Trip("change", f) for f in powercut.NETWORK_FAULTS], proxies)
        finally:
            clean_engine(engine)
    print("\n".join(powercut.network_summary(trips)))
    assert [t.faults for t in trips if not t.fired] == [], "every fault fired at least once"
    assert all(t.converged for t in trips), [t for t in trips if not t.converged]
    extra = sum(t.extra_bytes for t in trips) / sum(t.clean_bytes for t in trips)
    assert extra < 0.05, "the faults cost less than 5% more bytes than the updates themselves"
