"""Hugging Face model folders as build targets: ModelOpt unified format, compressed-tensors."""
