"""snsd.exitsignal leans on a private Twisted attribute: these tests fail if Twisted moves it."""

import inspect
import signal

from twisted.application import app
from twisted.internet.interfaces import _ISupportsExitSignalCapturing
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock

from snsd.exitsignal import exit_cleanly_after_sigterm


def test_twistd_still_reads_the_exit_signal_from_the_reactor_attribute():
    assert "_exitSignal" in _ISupportsExitSignalCapturing.names()
    assert "reactor._exitSignal" in inspect.getsource(app.ApplicationRunner.startReactor)


def test_a_reactor_stopped_by_sigterm_records_it_and_the_adapter_clears_it():
    reactor = SelectReactor()
    try:
        assert _ISupportsExitSignalCapturing.providedBy(reactor)
        reactor.sigTerm(signal.SIGTERM)
        assert reactor._exitSignal == signal.SIGTERM
        assert exit_cleanly_after_sigterm(reactor)
        assert reactor._exitSignal is None
    finally:
        reactor.disconnectAll()


def test_other_signals_and_reactors_without_the_attribute_are_left_alone():
    reactor = SelectReactor()
    try:
        reactor.sigInt(signal.SIGINT)
        assert not exit_cleanly_after_sigterm(reactor)
        assert reactor._exitSignal == signal.SIGINT
    finally:
        reactor.disconnectAll()
    assert not exit_cleanly_after_sigterm(Clock())
