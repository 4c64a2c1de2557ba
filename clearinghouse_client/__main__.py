"""`python -m clearinghouse_client ...` is the `clearinghouse` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
