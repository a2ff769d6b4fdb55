import sys

from caeadmm.cli import main

sys.exit(main())
