"""The one reach into a private Twisted attribute left in the daemon: twistd's exit signal.

On SIGTERM the reactor records the signal in ``reactor._exitSignal`` and, once the reactor has
stopped, ``twistd`` re-raises it, so the process ends "killed by SIGTERM" (status 143) however
cleanly it drained.  A supervisor reads that as a crash.  Twisted has no public way to say that a
signal-initiated stop completed cleanly: the attribute is declared only by the private interface
``twisted.internet.interfaces._ISupportsExitSignalCapturing``, and read by
``twisted.application.app.ApplicationRunner.startReactor``.  tests/test_exitsignal.py fails if
either changes, so an upgrade that moves it is caught by the suite and not in production.
"""

from __future__ import annotations

import signal

from twisted.internet.interfaces import _ISupportsExitSignalCapturing


def exit_cleanly_after_sigterm(reactor) -> bool:
    """If ``reactor`` is stopping because of SIGTERM, let twistd exit with status 0; True if it was."""
    if _ISupportsExitSignalCapturing.providedBy(reactor) and reactor._exitSignal == signal.SIGTERM:
        reactor._exitSignal = None
        return True
    return False
