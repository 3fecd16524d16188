"""Training straight from an HF folder and raw data (MindSpeed-LLM's ``--enable-hf2mg-convert`` journey).

``config`` (torch-free): the flags, their checks and where the caches live; ``cache``: keyed caches published
whole, one builder at a time; ``build``: the start-up hook (convert_ckpt.py's and preprocess_data.py's own
library functions) and the save hook (the HF copy of a save). See docs/train_from_hf.md.
"""
