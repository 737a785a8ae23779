"""``python tools/gradient_fidelity.py ...`` in a checkout: the same as ``tfcredit-fidelity ...``.

The code is ``tfcredit/cli/gradient_fidelity.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfcredit.cli.gradient_fidelity import main  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  main()
