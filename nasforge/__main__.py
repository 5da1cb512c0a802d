"""``python -m nasforge`` runs the command line."""

import sys

from nasforge.cli import main

sys.exit(main())
