"""Stop signals: finish the current iteration, write nothing half-way, say how to resume."""

from __future__ import annotations

import signal
import sys


class StopSignals:
    """SIGINT / SIGTERM set a flag that the training loop reads after every iteration.

    The current iteration finishes, nothing is left half-written, and the run says how
    to resume. A second signal of the same kind acts at once (SIGINT: a
    KeyboardInterrupt; SIGTERM: exit 128 + 15). Handlers are installed only in the main
    thread and restored on exit.
    """

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:  # the second one: stop now
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        name = signal.Signals(signum).name
        print(
            f"\n{name} received: finishing the current iteration, then stopping "
            f"(send {name} again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def pending(self) -> int | None:
        return self.signum

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc) -> None:
        self._restore()


__all__ = ["StopSignals"]
