import sys

from edgepress.cli.main import main

sys.exit(main())
