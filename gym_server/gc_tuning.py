"""Garbage-collector settings for a process whose only job is serving the gym.

CPython starts a young-generation collection every 700 net allocations and an older one every 10 of those. A
gym call allocates thousands of short-lived objects (the HTTP request, the JSON-RPC message, the SDK's pydantic
models, the sandbox frame), and while a thousand calls are in flight their objects are all young and alive, so
every collection walks all of them and finds nothing to free. Measured with 1,000 concurrent episodes on 2 cores
(bench/gym_throughput.py's soak): about a third of the gym's CPU went to collections that freed nothing.

What the process imported before serving (modules, compiled code) is moved out of the collector's sight with
`gc.freeze()`, and collections run about 70 times less often; what the app loads in its lifespan (the arena
store) ends up in the oldest generation, which these thresholds visit rarely. Reference counting still frees everything that
is not in a cycle at once; cycles are still collected, later (the young generation holds at most
`YOUNG_THRESHOLD` uncollected container objects, a few MB). Only the gym's own serving processes do this, never
a process that embeds a gym (a trainer), whose allocation pattern is its own business.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
OLDER_THRESHOLDS = (20, 100)


def tune_for_serving() -> None:
    """Call once, right before the process starts serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
