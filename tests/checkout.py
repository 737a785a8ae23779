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
  done, = run_tools((script, *args), timeout=timeout)
  return done


def run_tools(*calls, timeout: float = 900):
  """``run_tool`` for several ``(script, *args)`` calls started together (each
  spends seconds importing TensorFlow): their completed processes, in order."""
  env = {key: value for key, value in os.environ.items()
         if key != 'TF_CPP_MIN_LOG_LEVEL'}
  return run_together(
      [[sys.executable, os.path.join(REPOSITORY, 'tools', script), *args]
       for script, *args in calls], cwd=REPOSITORY, env=env, timeout=timeout)


def run_together(commands, cwd, env, timeout: float = 900):
  """Starts every command at once and returns their completed processes (text
  ``stdout`` and ``stderr``) in order."""
  processes = [subprocess.Popen(command, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env,
                                cwd=cwd) for command in commands]
  done = []
  for process in processes:
    stdout, stderr = process.communicate(timeout=timeout)
    done.append(subprocess.CompletedProcess(process.args, process.returncode,
                                            stdout, stderr))
  return done
