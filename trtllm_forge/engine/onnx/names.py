"""Graph-contract value names (docs/engine.md), importable without onnx or torch."""

INPUT_IDS = "input_ids"
POSITION_IDS = "position_ids"
ATTENTION_MASK = "attention_mask"
HIDDEN_IN = "hidden_states_in"
HIDDEN_OUT = "hidden_states_out"
LOGITS = "logits"
PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
COLLECTIVE_DOMAIN = "trtllm_forge.dist"  # the domain of the TP collectives' custom nodes


def past_name(layer: int, kind: str) -> str:
    """Graph input holding layer ``layer``'s cached ``kind`` ("key" or "value")."""
    return f"{PAST_PREFIX}{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    """Graph output holding layer ``layer``'s cache after this step."""
    return f"{PRESENT_PREFIX}{layer}.{kind}"
