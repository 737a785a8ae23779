"""``python tools/evaluate.py ...`` in a checkout: the same as ``tfcredit-evaluate ...``.

The code is ``tfcredit/cli/evaluate.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfcredit.cli.evaluate import main  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  main()
