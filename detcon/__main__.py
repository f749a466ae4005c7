"""``python -m detcon`` is the ``detcon`` command."""

import sys

from detcon.cli import main

sys.exit(main())
