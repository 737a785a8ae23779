"""``python tools/profile_ops.py ...`` in a checkout: the same as ``tfcredit-profile ...``.

The code is ``tfcredit/cli/profile_ops.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfcredit.cli.profile_ops import main  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  main()
