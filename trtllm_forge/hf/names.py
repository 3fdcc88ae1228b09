"""Names inside a build artifact of the Hugging Face folder targets."""

from __future__ import annotations

HF_DIR = "hf"  # the quantized folder's subdirectory in the build stage's artifact
