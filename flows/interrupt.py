"""Ctrl-C that stops an ``ldsm`` command even while RDKit runs in its threads.

RDKit (2025.03 and later) installs a SIGINT handler of its own while it embeds conformers
(``RDKit::ControlCHandler``, ``Code/RDGeneral/ControlCHandler.h``): a Ctrl-C then cancels that
one embedding and nothing else, and the handler puts back the one it found when it returns. With
two threads embedding at once (PoseBusters' energy ratio on the screen's thread pool) the
put-backs interleave and RDKit's handler stays installed, so every later Ctrl-C only cancels an
embedding (a wrong PoseBusters verdict) and the command runs on to its end (rdkit/rdkit#8576,
#9381; measured here: a screen of 600 molecules ignored Ctrl-C to its end).

:func:`ctrl_c_to_main_thread` blocks SIGINT in the main thread, and so in every thread started
after it, so that no handler, RDKit's or Python's, ever runs for it: a thread of its own takes
it with ``sigwait`` and raises :class:`KeyboardInterrupt` in the main thread (through SIGUSR2,
whose Python handler wakes a main thread that waits on a lock). Processes started meanwhile
inherit the blocked SIGINT (``TemporaryServer`` unblocks it in its server; Dask and pool workers
end with the command, which stops them).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

WAKE = signal.SIGUSR2


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_to_main_thread() -> Iterator[None]:
    """Inside, a SIGINT raises :class:`KeyboardInterrupt` in the main thread whatever handler a
    library installs. A no-op outside the main thread, where SIGINT is ignored (a background job
    of a script) or where threads cannot wait for signals."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        or not hasattr(signal, "pthread_sigmask")
    ):
        yield
        return
    main = threading.main_thread().ident
    done = threading.Event()

    def forward() -> None:
        while True:
            signal.sigwait({signal.SIGINT})
            if done.is_set():
                return
            signal.pthread_kill(main, WAKE)

    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous_wake = signal.signal(WAKE, _raise_keyboard_interrupt)
    forwarder = threading.Thread(target=forward, name="ldsm-ctrl-c", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        done.set()
        signal.pthread_kill(forwarder.ident, signal.SIGINT)  # ends its sigwait
        forwarder.join(5)
        signal.signal(WAKE, previous_wake)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def unblock_in_child() -> None:
    """For a ``preexec_fn``: the child process takes SIGINT again (exec keeps the blocked mask)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
