"""``python -m speeddata.commands ...``: the ``speeddata`` command."""

import sys

from . import main

sys.exit(main())
