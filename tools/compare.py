"""``python tools/compare.py ...`` in a checkout: the same as ``tfcredit-compare ...``.

The command is ``tfcredit/cli/compare.py``; its logic, ``tfcredit/comparison.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfcredit.cli.compare import main  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  main()
