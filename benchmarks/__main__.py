"""``python -m benchmarks``: the same as ``keystile bench``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
