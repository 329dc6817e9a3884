import sys

from scoregen.cli import main

sys.exit(main())
