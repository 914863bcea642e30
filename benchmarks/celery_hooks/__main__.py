"""``python -m benchmarks.celery_hooks``: see the package docstring."""

import sys

from benchmarks.celery_hooks.cli import main

sys.exit(main())
