"""A container whose network the engine lost in a power cut is recreated at start, whichever words
the engine refuses it with (tasks/start.py NETWORK_GONE); any other refusal is not taken for it."""

from __future__ import annotations

import pytest

from tasks.start import NETWORK_GONE

NETWORK = "2d4756036ef810bec50b9261024fec9f53f18881c73d553c70fa6028dbf8f680"


@pytest.mark.parametrize("refusal", [
    f"Error response from daemon: network {NETWORK} not found",
    # scripts/powercut --cuts 1 --seed 194804716 --mode random --at 3.762 --scenario downgrade --disk reorder
    (f"Error response from daemon: failed to create endpoint pair-producer-1 on network pair_default: "
     f"network {NETWORK} does not exist"),
])
def test_a_network_the_engine_lost_is_recognised_in_either_wording(refusal: str) -> None:
    assert NETWORK_GONE.search(refusal)


def test_a_network_that_is_there_but_refuses_for_another_reason_is_not_taken_for_a_lost_one() -> None:
    assert not NETWORK_GONE.search("failed to create endpoint web on network pair_default: "
                                   "Bind for 127.0.0.1:8080 failed: port is already allocated")
