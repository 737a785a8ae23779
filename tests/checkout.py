"""Test helpers tied to the repository checkout (not shipped in the wheel):
its root and the thin ``tools/`` wrappers of the entry points."""

import os
import subprocess
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(script: str, *args: str, timeout: float = 900
             ) -> subprocess.CompletedProcess:
  """Runs ``tools/<script>`` (the checkout's thin wrapper of the
  ``tfcredit.cli`` entry point) with ``args`` in a fresh interpreter from the
  repository root; returns the completed process (text ``stdout`` and
  ``stderr``). ``TF_CPP_MIN_LOG_LEVEL`` is left unset, as for a user, so the
  entry point's own quiet start is what keeps TensorFlow's lines out."""
  env = {key: value for key, value in os.environ.items()
         if key != 'TF_CPP_MIN_LOG_LEVEL'}
  return subprocess.run(
      [sys.executable, os.path.join(REPOSITORY, 'tools', script), *args],
      capture_output=True, text=True, env=env, cwd=REPOSITORY, timeout=timeout)
