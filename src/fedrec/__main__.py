"""``python -m fedrec`` is the ``fedrec`` command."""

import sys

from fedrec.cli import main

sys.exit(main())
