import sys

from lungfusion.cli import main

sys.exit(main())
