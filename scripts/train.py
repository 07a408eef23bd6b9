#!/usr/bin/env python
"""Train a captioner: the same code and flags as `captioner train` (see `--help`)."""

import sys

from captioner.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
