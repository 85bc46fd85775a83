"""The running head-end: supervisor, workers, store process, admin socket."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Garbage collection for long-running processes that hold many live objects
    (sessions, directories) and churn through short-lived ones (frames, batches).

    What exists after start-up moves to the permanent generation, so full collections
    stop rescanning it, and young collections run every 20,000 allocations instead of
    700: under load they otherwise cost several per cent of a worker's or the store's
    CPU (measured with perf: gc_collect_main and visit_* in the store's profile).
    Reference cycles are still collected, only less often.
    """
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
