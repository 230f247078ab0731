import sys

from stablesweep.cli import main

sys.exit(main())
