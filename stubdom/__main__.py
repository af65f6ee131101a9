import sys

from stubdom.cli import main

sys.exit(main())
