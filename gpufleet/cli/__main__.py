"""`python -m gpufleet.cli`."""
import os

from gpufleet.cli import main

os.environ.setdefault("COLUMNS", "160")
main()
