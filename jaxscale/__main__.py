import sys

from jaxscale.train import main

sys.exit(main())
