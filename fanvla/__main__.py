import sys

from fanvla.cli import main

sys.exit(main())
