"""Ctrl-C as a request: long jobs (training, video) stop at a point of their own choosing.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT
comes: inside a library's half-finished call, a half-written output, a
cleanup. :func:`ctrl_c_calls` turns SIGINT into a call instead, and the job
checks for it where stopping is safe.
"""

import contextlib
import os
import signal
import threading


@contextlib.contextmanager
def ctrl_c_calls(handler):
    """Inside the block, Ctrl-C (SIGINT) calls ``handler()`` instead of raising ``KeyboardInterrupt``.

    Only in the main thread with Python's own SIGINT handler in place: under a
    host that handles SIGINT itself (a notebook kernel, a test runner), or in
    another thread, the block runs as it is and Ctrl-C raises where it lands.
    Processes forked inside the block (data-loading workers) inherit the
    handler but ignore SIGINT: the process that installed it decides.
    ``handler`` may raise ``KeyboardInterrupt`` itself (a second Ctrl-C that
    should stop at once).

    Args:
        handler: a function of no arguments, run in the main thread between
            two Python instructions: it should set a flag, nothing more
            (print with ``os.write``: ``print`` may be mid-write).

    Yields:
        Whether the handler is installed.

    Example:
        >>> stop = threading.Event()
        >>> with ctrl_c_calls(stop.set):
        ...     while not stop.is_set() and more_work():
        ...         work()
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield False
        return
    pid = os.getpid()

    def on_sigint(signum, frame):
        if os.getpid() == pid:
            handler()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield True
    finally:
        signal.signal(signal.SIGINT, previous)
