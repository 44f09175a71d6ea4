"""GLM Image: a web demo for CogView4 text-to-image. Run ``python app.py --help`` for the options."""

import sys

from glmimage.web.server import main

if __name__ == "__main__":
    sys.exit(main())
