"""SIGTERM handled like Ctrl-C: what schedulers, `docker stop` and Kubernetes send must
run the same clean-ups (staging folders, temporary files) as a KeyboardInterrupt.

During `model.fit` the signal is only noted; a callback then stops at the next batch
boundary (see callbacks.StopOnSigterm), so no checkpoint is ever cut in half.
"""

import contextlib
import signal


class Terminated(BaseException):
    """Raised for SIGTERM. A BaseException, like KeyboardInterrupt, so that
    `except Exception` does not swallow it and every `finally` runs."""


_state = {"deferred": False, "pending": False}


def _on_sigterm(signum, frame):
    if _state["deferred"]:
        _state["pending"] = True
    else:
        raise Terminated()


def raise_on_sigterm():
    """Make SIGTERM raise Terminated in the main thread from now on."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def pending():
    """Whether a SIGTERM arrived while it was deferred."""
    return _state["pending"]


@contextlib.contextmanager
def deferred():
    """Note SIGTERM instead of raising it inside this block; raise it at the end."""
    _state.update(deferred=True, pending=False)  # a SIGTERM of an earlier block was handled
    try:
        yield
    finally:
        _state["deferred"] = False
    if _state["pending"]:
        raise Terminated()
