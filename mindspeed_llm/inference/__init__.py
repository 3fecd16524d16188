"""Text generation from Megatron checkpoints (inference.py): arguments (torch-free), generation loop, CLI."""
