"""Stop signals: finish the current iteration, write nothing half-way, say how to resume."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator


class StopSignals:
    """SIGINT / SIGTERM set a flag that the training loop reads after every iteration.

    The current iteration finishes, nothing is left half-written, and the run says how
    to resume. A second signal acts at once (SIGINT: a KeyboardInterrupt; SIGTERM: exit
    128 + 15) unless ``escalate`` is False: a study's trial ignores it, because the study
    that started the trial decides when to kill it (and a Ctrl-C reaches the trial both
    from the terminal and from the study). Handlers are installed only in the main
    thread and restored on exit.

    Inside :meth:`at_once` (an evaluation, which writes nothing and has no iteration
    worth finishing) a signal stops at once with ``EvaluationInterrupted``. Calling the
    object is :meth:`pending`, so it can be given as ``train(..., should_stop=...)``.
    """

    def __init__(self, escalate: bool = True):
        self.signum: int | None = None
        self.escalate = escalate
        self._old: dict = {}
        self._at_once = False

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None and not self._at_once:  # the second one
            if not self.escalate:
                return
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        name = signal.Signals(signum).name
        if self._at_once:
            print(f"\n{name} received: stopping the evaluation", file=sys.stderr, flush=True)
            self._raise_pending()
        print(
            f"\n{name} received: finishing the current iteration, then stopping "
            f"(send {name} again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _raise_pending(self) -> None:
        from ..engines.guards import EvaluationInterrupted

        self._at_once = False  # one exception; the code unwinding it is not interrupted
        raise EvaluationInterrupted(self.signum)

    @contextlib.contextmanager
    def at_once(self) -> Iterator[None]:
        """Within the block a stop signal (or one already received) raises at once."""
        if self.signum is not None:
            self._raise_pending()
        self._at_once = True
        try:
            yield
        finally:
            self._at_once = False

    def pending(self) -> int | None:
        return self.signum

    __call__ = pending

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc) -> None:
        self._restore()


class StopRequested(Exception):
    """A stop signal (``signum``) that a process waiting on others acts on at once."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def raise_on_stop_signals() -> Iterator[None]:
    """Within the block every SIGINT / SIGTERM raises :class:`StopRequested` at once.

    For a process with no iteration of its own to finish, one that waits on others (a
    study's driver waits on its trials): the exception unwinds it through the code that
    stops what it started. Main thread only (elsewhere nothing is installed).
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, _frame):
        raise StopRequested(signum)

    old = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


__all__ = ["StopRequested", "StopSignals", "raise_on_stop_signals"]
