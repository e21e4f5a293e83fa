"""Export checkpoints as Hugging Face folders, and load such folders (issue #9)."""
