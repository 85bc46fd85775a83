"""``python -m headend`` is the ``headend`` command."""

import sys

from headend.cli import main

sys.exit(main())
