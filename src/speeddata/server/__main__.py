"""``python -m speeddata.server``: the same as ``speeddata serve``."""

import sys

from ..commands import main

sys.exit(main(["serve", *sys.argv[1:]]))
