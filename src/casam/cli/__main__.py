"""``python -m casam.cli``: the same as the ``casam`` command."""

import sys

from casam.cli import main

sys.exit(main())
