"""``python tools/benchmark.py ...`` in a checkout: the same as ``tfcredit-benchmark ...``.

The command is ``tfcredit/cli/benchmark.py``; the measuring code, the package
``tfcredit/benchmarks/``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfcredit.cli.benchmark import main  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  main()
