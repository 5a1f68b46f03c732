"""Timing several runtimes in one process without one's idle threads slowing the next.

ONNX Runtime's intra-op threads spin for a while after each run (its default,
``session.intra_op.allow_spinning=1``), and so do TVM's. Timing ORT and TVM strictly one call
each in turn therefore times each runtime while the other's threads still hold a core: on the
2-core machine a MobileNetV2-like model ran in 9.6 ms in TVM alone and 50 ms interleaved with ORT
(ORT itself: 4.9 ms alone). :func:`timed_blocks` alternates *blocks*: per round and runtime, one
untimed call (absorbs the previous runtime's spinning), then ``block`` timed calls. Rounds still
alternate, so load changes from other jobs hit every runtime alike.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def timed_blocks(fns: dict[str, Callable[[], object]], repeat: int, block: int = 5,
                 warmup: int = 3) -> dict[str, list[float]]:
    """Per label, ``repeat`` call times in ms (``ceil(repeat / block)`` rounds of ``block`` calls)."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    while min(len(v) for v in times.values()) < repeat:
        for k, f in fns.items():
            f()  # untimed: lets the other runtime's spinning threads go idle
            for _ in range(min(block, repeat - len(times[k]))):
                t0 = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """Median ms per label."""
    return {k: float(statistics.median(v)) for k, v in times.items()}
