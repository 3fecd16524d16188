"""Stand-in: Megatron-LM's parser hooks (add_megatron_arguments, parse_args, validate_args) and its
translation of the flags to megatron-core's config (core_transformer_config_from_args)."""

import argparse

from megatron.training.utils import get_device_arch_version


def add_megatron_arguments(parser):
    """Megatron-LM's defaults that need Transformer Engine, Apex kernels or torch.compile."""
    parser.add_argument("--transformer-impl", default="transformer_engine",
                        choices=["local", "transformer_engine"])
    parser.add_argument("--no-rope-fusion", action="store_false", dest="apply_rope_fusion")
    parser.add_argument("--no-gradient-accumulation-fusion", action="store_false",
                        dest="gradient_accumulation_fusion")
    parser.add_argument("--no-masked-softmax-fusion", action="store_false", dest="masked_softmax_fusion")
    parser.add_argument("--no-bias-gelu-fusion", action="store_false", dest="bias_gelu_fusion")
    parser.add_argument("--no-bias-swiglu-fusion", action="store_false", dest="bias_swiglu_fusion")
    parser.add_argument("--no-bias-dropout-fusion", action="store_false", dest="bias_dropout_fusion")
    parser.add_argument("--use-flash-attn", action="store_true")
    parser.add_argument("--tensor-model-parallel-size", type=int, default=2)
    parser.add_argument("--position-embedding-type", type=str, default="learned_absolute",
                        choices=["learned_absolute", "rope", "mrope", "relative", "none"])
    parser.add_argument("--max-position-embeddings", type=int, default=None)
    parser.add_argument("--multi-latent-attention", action="store_true")
    parser.add_argument("--rotary-scaling-factor", type=float, default=1.0)  # MLA's
    parser.add_argument("--mscale", type=float, default=1.0)
    parser.add_argument("--mscale-all-dim", type=float, default=0.0)
    return parser


def parse_args(extra_args_provider=None, ignore_unknown_args=False):
    """Parse sys.argv with the (patchable) module-level add_megatron_arguments."""
    parser = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
    if extra_args_provider is not None:
        parser = extra_args_provider(parser)
    return parser.parse_known_args()[0] if ignore_unknown_args else parser.parse_args()


def validate_args(args, defaults={}):  # noqa: B006
    """Megatron-LM asks the GPU's architecture when TP > 1."""
    if args.tensor_model_parallel_size > 1:
        args.device_arch = get_device_arch_version()
    return args


def core_transformer_config_from_args(args, config_class=None):
    """Every field of the config class the parsed namespace has (Megatron-LM's translation, without its
    derived settings)."""
    import dataclasses

    from megatron.core.transformer import TransformerConfig

    config_class = config_class or TransformerConfig
    return config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
                           if hasattr(args, f.name)})
