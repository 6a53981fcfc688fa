"""The Haiku DEQ Transformer language model, its byte-level data and its training command."""
