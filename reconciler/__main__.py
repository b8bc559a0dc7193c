"""`python -m reconciler` is the `reconciler` command."""

import sys

from reconciler.entry import main

sys.exit(main())
