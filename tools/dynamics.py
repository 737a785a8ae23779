"""``python tools/dynamics.py ...`` in a checkout: the same as ``tfcredit-dynamics ...``.

The code is ``tfcredit/cli/dynamics.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfcredit.cli.dynamics import main  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  main()
