"""Model sources: a Hugging Face Hub repo, a local HF-format folder, or a GGUF file.

Each resolver returns a :class:`Snapshot` (an immutable listing of the files
forge will read, with sizes and, for hub files, the hub's own hashes). Heavy
libraries (huggingface_hub, transformers, torch) are imported inside the
functions, so importing this package stays cheap.
"""

from trtllm_forge.sources.gguf import gguf_snapshot, gguf_to_hf
from trtllm_forge.sources.hf import hub_cache_dir, hub_offline, resolve_hf
from trtllm_forge.sources.local import resolve_local
from trtllm_forge.sources.policy import read_config
from trtllm_forge.sources.snapshot import FileRef, Snapshot

__all__ = [
    "FileRef",
    "Snapshot",
    "gguf_snapshot",
    "gguf_to_hf",
    "hub_cache_dir",
    "hub_offline",
    "read_config",
    "resolve_hf",
    "resolve_local",
]
