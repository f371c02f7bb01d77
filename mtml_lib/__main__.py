import sys

from mtml_lib.cli import main

sys.exit(main())
