"""``python -m cluster.validate`` (see :mod:`cluster.validate`)."""
import sys

from cluster.validate.cli import main

sys.exit(main())
