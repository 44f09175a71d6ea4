"""GLM Image: a web demo for CogView4 text-to-image. Run ``python app.py --help`` for the options."""

import sys

from glmimage import zerogpu

zerogpu.import_spaces()  # on Hugging Face ZeroGPU only: `spaces` must come before anything starts CUDA

from glmimage.web.server import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
