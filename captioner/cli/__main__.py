"""`python -m captioner.cli`: what the `captioner` command runs."""

import sys

from captioner.cli import main

sys.exit(main())
