"""``python -m ratepilot`` is the ``ratepilot`` command."""

from __future__ import annotations

from ratepilot.cli import main

main()
