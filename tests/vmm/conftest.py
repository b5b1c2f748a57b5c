"""Lets the vmm tests import their shared helpers (migration_helpers) under
pytest's importlib import mode, as the root conftest does for tests/guests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
