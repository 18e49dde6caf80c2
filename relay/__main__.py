"""``python -m relay`` does what the ``relay`` console script does."""

import sys

from relay.cli import main

sys.exit(main())
