"""Stop requests that must end in a saved checkpoint, not a lost run.

Ctrl-C raises ``KeyboardInterrupt`` and the trainer saves ``last.pt`` on its way out. Batch
schedulers (SLURM preemption, Kubernetes, ``timeout``) send SIGTERM instead, and a job started in
the background of a non-interactive shell (``nohup cmd &``) has SIGINT ignored altogether, so
SIGTERM is the one signal every launcher can deliver: while training runs it is turned into the
same ``KeyboardInterrupt``.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM during training (a ``KeyboardInterrupt``, so every interrupt path handles it)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated``; the previous handler is restored after.
    Signal handlers can only be set from the main thread: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
