"""``python -m geomed_mim.convert``."""

import sys

from geomed_mim.convert import main

sys.exit(main())
