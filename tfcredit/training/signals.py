"""Stopping on SIGTERM and SIGINT (docs/design.md, "Entry points").

Two regimes:

* ``immediate()`` (installed by the entry points for the whole process): SIGTERM
  raises ``Terminated`` (a ``KeyboardInterrupt``, as SIGINT raises), so start-up,
  evaluation and export end at once with one line and no traceback.
* ``deferred()`` (the trainer's loop): a first SIGTERM or SIGINT only records the
  request; the trainer finishes the current training call, writes a checkpoint and
  raises ``Interrupted``. A second signal while the first is pending stops at once.

Exit codes: 128 + the signal number, as a shell reports a process killed by it:
130 for SIGINT (Ctrl-C), 143 for SIGTERM.
"""

import contextlib
import signal
import threading
from typing import Iterator, Optional

from tfcredit.errors import TfcreditError

HANDLED = (signal.SIGINT, signal.SIGTERM)


def exit_code_of(signum: int) -> int:
  return 128 + int(signum)


def name(signum: int) -> str:
  return signal.Signals(signum).name


class Terminated(KeyboardInterrupt):
  """Raised by the immediate SIGTERM handler (SIGINT raises KeyboardInterrupt)."""

  def __init__(self, signum: int = signal.SIGTERM):
    super().__init__(name(signum))
    self.signum = signum


def signal_of(interrupt: KeyboardInterrupt) -> int:
  """The signal a ``KeyboardInterrupt`` stands for."""
  return getattr(interrupt, 'signum', signal.SIGINT)


class Interrupted(TfcreditError):
  """Training stopped on a signal after writing a checkpoint."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum

  @property
  def exit_code(self) -> int:  # A property: gin's exception proxy forwards it.
    return exit_code_of(self.signum)


def _main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum, frame):
  del frame
  raise Terminated(signum)


def install_immediate() -> None:
  """SIGTERM raises ``Terminated``; SIGINT raises ``KeyboardInterrupt``."""
  if _main_thread():
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)


class StopRequest:
  """What ``deferred()`` yields: the first signal received, if any."""

  def __init__(self):
    self.signum: Optional[int] = None

  @property
  def requested(self) -> bool:
    return self.signum is not None


@contextlib.contextmanager
def deferred() -> Iterator[StopRequest]:
  """Within the block, SIGTERM and SIGINT are recorded rather than raised (a
  second one raises at once); the previous handlers come back on exit. Outside
  the main thread nothing is installed (Python delivers signals there only)."""
  request = StopRequest()
  if not _main_thread():
    yield request
    return

  def record(signum, frame):
    del frame
    if request.requested:  # Asked twice: stop now.
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      raise Terminated(signum)
    request.signum = signum

  previous = {signum: signal.signal(signum, record) for signum in HANDLED}
  try:
    yield request
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
