"""Signals around the optimiser loop: Ctrl-C noted and honoured at an iteration's end, twice to stop at once."""

from __future__ import annotations

import os
import signal

import pytest

from hires_nst.io.safety import deferred_interrupts, stop_requests


def press(signum: int = signal.SIGINT) -> None:
    os.kill(os.getpid(), signum)


def test_ctrl_c_is_noted_once_and_a_second_one_stops_at_once() -> None:
    with stop_requests() as request:
        press()
        assert request.made and request.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            press()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_held_by_a_checkpoint_write_becomes_a_request_not_an_exception() -> None:
    with stop_requests() as request:
        with deferred_interrupts():
            press()
            assert not request.made  # held until the write is whole
        assert request.made


def test_without_the_loop_ctrl_c_still_raises_at_once() -> None:
    with stop_requests(enabled=False) as request, pytest.raises(KeyboardInterrupt):
        press()
    assert not request.made
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        press()


def test_a_signal_left_to_the_system_is_not_taken_over() -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a spawned rank has SIGINT
    try:
        with stop_requests() as request:
            press(signal.SIGTERM)
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and not request.made
    finally:
        signal.signal(signal.SIGTERM, previous)
