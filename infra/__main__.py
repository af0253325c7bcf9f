"""Entry point of `python -m infra`."""

import sys

from infra.cli import main

sys.exit(main())
