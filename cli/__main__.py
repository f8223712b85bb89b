"""``python -m cli`` (``.venv/bin/esp``): run the operators' command line."""

import sys

from cli.main import main

sys.exit(main())
