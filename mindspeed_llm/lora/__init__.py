"""LoRA (stand-in of helper C's package for the config branch: only ``config.py``; the lead takes helper C's)."""
