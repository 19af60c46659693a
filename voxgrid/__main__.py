import sys

from voxgrid.cli import main

sys.exit(main())
