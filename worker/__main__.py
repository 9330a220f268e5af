import sys

from neuroseg.worker.cli import main

sys.exit(main())
