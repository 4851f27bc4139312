"""``python -m mobilenets`` (and ``torchrun -m mobilenets``) runs the CLI."""

import sys

from mobilenets.cli import main

sys.exit(main())
