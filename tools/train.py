"""``python tools/train.py ...`` in a checkout: the same as ``tfcredit-train ...``.

The code is ``tfcredit/cli/train.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfcredit.cli.train import main  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  main()
