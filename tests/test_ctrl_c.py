"""Ctrl-C as a request (ssd300.ctrl_c) and training's StopOnCtrlC callback."""

import multiprocessing
import os
import signal
import sys
import threading

import pytest

from ssd300.ctrl_c import ctrl_c_calls

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to itself (POSIX)"),
              pytest.mark.usefixtures("python_sigint")]


def test_sigint_calls_the_handler_inside_the_block_only():
    calls = []
    with ctrl_c_calls(lambda: calls.append(1)) as installed:
        assert installed
        signal.raise_signal(signal.SIGINT)  # Python runs the handler before this returns
        signal.raise_signal(signal.SIGINT)
    assert calls == [1, 1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_put_back_when_the_block_raises_and_a_handler_may_raise():
    def second_stops(calls=[]):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_calls(second_stops):
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_left_alone_off_the_main_thread_or_under_another_handler():
    seen = []

    def in_thread():
        with ctrl_c_calls(lambda: None) as installed:
            seen.append((installed, signal.getsignal(signal.SIGINT)))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [(False, signal.default_int_handler)]

    def host(signum, frame):  # a notebook kernel's, say
        seen.append("host")

    previous = signal.signal(signal.SIGINT, host)
    try:
        with ctrl_c_calls(lambda: seen.append("ours")) as installed:
            assert not installed
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is host
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen[1:] == ["host"]


def _raise_sigint_and_exit():
    signal.raise_signal(signal.SIGINT)
    os._exit(0)  # not reached if SIGINT raised KeyboardInterrupt or ran the handler's os._exit


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_worker_ignores_sigint():
    """Data-loading processes forked inside the block inherit the handler; only the process that set it acts."""
    with ctrl_c_calls(lambda: os._exit(3)):
        worker = multiprocessing.get_context("fork").Process(target=_raise_sigint_and_exit)
        worker.start()
        worker.join(60)
    assert worker.exitcode == 0


keras = pytest.importorskip("keras")

from ssd300.callbacks import StopOnCtrlC  # noqa: E402


def callback(epochs=3, agree=None):
    stop = StopOnCtrlC(agree=agree)
    stop.set_params({"epochs": epochs, "steps": 2})
    return stop


def test_first_ctrl_c_stops_at_the_next_step_end_the_second_at_once(capfd):
    stop = callback()
    stop.on_train_batch_end(0)  # nothing asked
    stop.on_test_batch_end(0)
    stop.on_epoch_end(0)
    with stop.installed():
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        assert "Ctrl-C: stopping at the end of this step (press it again to stop at once)" in capfd.readouterr().err
        for boundary in (stop.on_train_batch_end, stop.on_test_batch_end, stop.on_epoch_end):
            with pytest.raises(KeyboardInterrupt):
                boundary(0)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_last_epoch_ends_as_a_finished_run():
    stop = callback(epochs=3)
    stop.request()
    stop.on_epoch_end(2)  # epochs 1-3: the run is done, not interrupted
    with pytest.raises(KeyboardInterrupt):
        stop.on_epoch_end(1)


def test_a_distributed_run_follows_the_agreed_decision():
    asked = []

    def agree(flag):  # process 0's decision; here: never stop
        asked.append(flag)
        return False

    stop = callback(agree=agree)
    stop.request()
    stop.on_train_batch_end(0)
    stop.on_test_batch_end(0)
    assert asked == [True, True]
    with pytest.raises(KeyboardInterrupt):
        callback(agree=lambda flag: True).on_train_batch_end(0)  # process 0 asked, this one did not
