"""``python -m mtsmart`` (and ``torchrun -m mtsmart``) runs the command line."""

import sys

from mtsmart.cli import main

sys.exit(main())
