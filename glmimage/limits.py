"""Every limit and default of GLM Image, in one place.

Model-specific rules (sizes, steps, guidance, prompt tokens) live in the capability table
(``glmimage/models/families.py``); the names below are the CogView4 row's values, kept for the code and the page
that predate the table. The request bounds keep one request's cost and memory bounded on a shared GPU.
"""

from __future__ import annotations

from .models.families import COGVIEW4

DEFAULT_MODEL = COGVIEW4.hub_id

# CogView4 size rules.
MIN_SIDE = COGVIEW4.sizes.min_side
MAX_SIDE = COGVIEW4.sizes.max_side
SIDE_MULTIPLE = COGVIEW4.sizes.multiple
MAX_PIXELS = COGVIEW4.sizes.max_pixels

# Request bounds.
MAX_SEED = 2**32 - 1
MIN_STEPS, MAX_STEPS = COGVIEW4.steps_range
MIN_GUIDANCE, MAX_GUIDANCE = COGVIEW4.guidance_range
MIN_IMAGES, MAX_IMAGES = 1, COGVIEW4.max_images
MAX_PROMPT_TOKENS = COGVIEW4.max_prompt_tokens  # CogView4's max_sequence_length
# Cheap bound checked before tokenising, so a 100 kB string never reaches the tokenizer.
MAX_PROMPT_CHARS = 4000

# Defaults of the official CogView4 demo.
DEFAULT_WIDTH, DEFAULT_HEIGHT = COGVIEW4.default_size
DEFAULT_STEPS = COGVIEW4.default_steps
DEFAULT_GUIDANCE = COGVIEW4.default_guidance
DEFAULT_NUM_IMAGES = 1
DEFAULT_STYLE = "none"

# Request bodies: the largest /generate call (two prompts of MAX_PROMPT_CHARS, each character JSON-escaped to
# 12 bytes) is under 100 KiB; anything bigger is refused before it is read to the end.
MAX_REQUEST_BODY_BYTES = 256 * 1024

# Per-session memory bounds.
MAX_HISTORY_ENTRIES = 20
MAX_LOG_ENTRIES = 200

# Uploaded pictures (edits). Bytes per file is an operator flag (--max-upload-mb); the pixel bound stops a
# decompression bomb before it is decoded: 50 MP holds a 48 MP phone photo, and decodes to at most ~150 MB of RGB.
DEFAULT_MAX_UPLOAD_MB = 20.0
MAX_UPLOAD_PIXELS = 50_000_000
