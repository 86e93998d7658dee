import sys

from ev3.cli import main

sys.exit(main())
