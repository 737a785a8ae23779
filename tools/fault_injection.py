"""``python tools/fault_injection.py ...`` in a checkout: the same as ``tfcredit-fault-injection ...``.

The code is ``tfcredit/cli/fault_injection.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfcredit.cli.fault_injection import main  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  main()
