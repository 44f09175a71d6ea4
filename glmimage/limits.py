"""Every limit and default of GLM Image, in one place.

Size rules come from the CogView4 model card; the pipeline itself only checks "divisible by 16", so the app
enforces the stricter ones. The request bounds keep one request's cost and memory bounded on a shared GPU.
"""

from __future__ import annotations

DEFAULT_MODEL = "THUDM/CogView4-6B"

# CogView4 size rules.
MIN_SIDE = 512
MAX_SIDE = 2048
SIDE_MULTIPLE = 32
MAX_PIXELS = 2**21

# Request bounds.
MAX_SEED = 2**32 - 1
MIN_STEPS, MAX_STEPS = 1, 100
MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 20.0
MIN_IMAGES, MAX_IMAGES = 1, 4
MAX_PROMPT_TOKENS = 1024  # CogView4's max_sequence_length
# Cheap bound checked before tokenising, so a 100 kB string never reaches the tokenizer.
MAX_PROMPT_CHARS = 4000

# Defaults of the official CogView4 demo.
DEFAULT_WIDTH = DEFAULT_HEIGHT = 1024
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 3.5
DEFAULT_NUM_IMAGES = 1
DEFAULT_STYLE = "none"

# Request bodies: the largest /generate call (two prompts of MAX_PROMPT_CHARS, each character JSON-escaped to
# 12 bytes) is under 100 KiB; anything bigger is refused before it is read to the end.
MAX_REQUEST_BODY_BYTES = 256 * 1024

# Per-session memory bounds.
MAX_HISTORY_ENTRIES = 20
MAX_LOG_ENTRIES = 200
