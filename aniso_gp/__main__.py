"""``python -m aniso_gp``: the same as the ``aniso-gp`` command."""

import sys

from aniso_gp.cli import main

sys.exit(main())
