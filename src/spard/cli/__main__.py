import sys

from spard.cli import main

sys.exit(main())
