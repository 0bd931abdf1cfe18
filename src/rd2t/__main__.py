import sys

from rd2t.cli import main

sys.exit(main())
