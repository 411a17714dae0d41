import sys

from emcore._cli import main

sys.exit(main())
