"""Generation bookkeeping that needs no model."""

from __future__ import annotations

import pytest

from kubetune_trainer.generation import Endings

pytestmark = pytest.mark.unit


def test_generation_endings_count_stops_and_cuts():
    endings = Endings()
    stop, pad = 9, 0
    endings.add([5, 6, stop, pad], [stop], max_new_tokens=4)  # stopped
    endings.add([5, 6, 7, 8], [stop], max_new_tokens=4)  # cut at the limit
    endings.add([5, stop], [stop], max_new_tokens=2)  # stopped on the last allowed token
    endings.add([], [stop], max_new_tokens=4)  # nothing generated: neither
    assert endings.metrics() == {"stop_token_rate": 0.5, "truncated_rate": 0.25}
