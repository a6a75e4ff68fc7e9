"""`python -m app`: the same as the `cargohold` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
