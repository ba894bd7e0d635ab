"""Put bench/ on sys.path so benchmark files can import problems.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
