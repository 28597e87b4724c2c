import sys

from edgepress.cli import main

sys.exit(main())
