"""Preference alignment's settings: the DPO / SimPO / ORPO flags, their checks, and :class:`DpoConfig`.

MindSpeed-LLM's flag names (``--stage dpo --is-pairwise-dataset --dpo-loss-type --dpo-beta
--dpo-label-smoothing --pref-ftx --ref-model --refer-model-iter``) and LLaMA-Factory's for the
reference-free losses (``--stage simpo|orpo`` or ``--dpo-loss-type simpo|orpo``, ``--simpo-gamma``).

Torch-free: the command lines import it before the heavy modules.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


class DpoError(ValueError):
    """A preference-alignment flag that cannot be used; one line naming the flag and the fix."""


# --stage values this module serves; each trains on pairwise data (chosen and rejected answers).
STAGES = ("dpo", "simpo", "orpo")
REFERENCE_LOSSES = ("sigmoid", "hinge", "ipo")  # DPO: against a frozen reference model
REFERENCE_FREE_LOSSES = ("simpo", "orpo")  # against nothing: no reference model is built
LOSS_TYPES = REFERENCE_LOSSES + REFERENCE_FREE_LOSSES
GROUP_TITLE = "preference alignment (posttrain_gpt.py --stage dpo|simpo|orpo, docs/dpo.md)"


def add_dpo_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Declare the preference-alignment flags in their own group (``--stage`` itself is the training
    parser's)."""
    g = parser.add_argument_group(GROUP_TITLE)
    g.add_argument(
        "--is-pairwise-dataset",
        action="store_true",
        help="--data-path is pairwise data: PREFIX_packed_{chosen,rejected}_{input_ids,labels}_document "
        "(preprocess_data.py --handler-name AlpacaStylePairwiseHandler|SharegptStylePairwiseHandler)",
    )
    g.add_argument(
        "--dpo-loss-type",
        default=None,
        choices=LOSS_TYPES,
        help="sigmoid (DPO, the default), hinge (SLiC), ipo (IPO), or the reference-free simpo / orpo "
        "(what --stage simpo|orpo select)",
    )
    g.add_argument(
        "--dpo-beta",
        type=float,
        default=0.1,
        help="beta: the reward scale of DPO/SimPO (IPO's tau, ORPO's lambda) (0.1)",
    )
    g.add_argument(
        "--dpo-label-smoothing",
        type=float,
        default=0.0,
        help="cDPO's label smoothing for sigmoid and simpo, in [0, 0.5) (0.0)",
    )
    g.add_argument(
        "--pref-ftx",
        type=float,
        default=0.0,
        help="weight of the SFT loss on the chosen answers added to the preference loss (0.0)",
    )
    g.add_argument(
        "--simpo-gamma",
        type=float,
        default=0.5,
        help="SimPO's target reward margin gamma (LLaMA-Factory's simpo_gamma, 0.5)",
    )
    g.add_argument(
        "--ref-model",
        default=None,
        metavar="CKPT",
        help="the reference model: a Megatron checkpoint of the same model and layout (default: "
        "the starting weights, --load)",
    )
    g.add_argument(
        "--refer-model-iter",
        type=int,
        default=1,
        help="the iteration of --ref-model (or of --load) that is the reference when a resumed run "
        "starts from a later checkpoint (1: what convert_ckpt.py writes)",
    )
    return g


@dataclass(frozen=True)
class DpoConfig:
    """The settings of one preference-alignment run."""

    loss_type: str
    beta: float
    label_smoothing: float
    pref_ftx: float
    simpo_gamma: float
    ref_model: str | None
    refer_model_iter: int

    @property
    def needs_reference(self) -> bool:
        """Whether the loss compares with a reference model (DPO's losses; not SimPO or ORPO)."""
        return self.loss_type in REFERENCE_LOSSES

    @property
    def averages_logps(self) -> bool:
        """Whether a sequence's log-probability is the mean over its answer tokens (IPO, SimPO, ORPO), not
        the sum."""
        return self.loss_type in ("ipo", "simpo", "orpo")

    @classmethod
    def from_args(cls, args) -> DpoConfig | None:
        """The run's settings (None when the launch is not a preference-alignment stage)."""
        if getattr(args, "stage", None) not in STAGES:
            return None
        return cls(
            loss_type=loss_type_of(args),
            beta=float(args.dpo_beta),
            label_smoothing=float(args.dpo_label_smoothing),
            pref_ftx=float(args.pref_ftx),
            simpo_gamma=float(args.simpo_gamma),
            ref_model=args.ref_model,
            refer_model_iter=int(args.refer_model_iter),
        )


def loss_type_of(args) -> str:
    """The loss of the launch: --dpo-loss-type, else what --stage names (dpo: sigmoid)."""
    if args.dpo_loss_type is not None:
        return args.dpo_loss_type
    return "sigmoid" if args.stage == "dpo" else args.stage


def check_dpo_flags(args: argparse.Namespace) -> None:
    """The preference-alignment flags against each other and the launch; :class:`DpoError` names the flag."""
    stage = getattr(args, "stage", None)
    if stage not in STAGES:
        given = [
            flag
            for flag, on in (
                ("--is-pairwise-dataset", args.is_pairwise_dataset),
                ("--dpo-loss-type", args.dpo_loss_type),
                ("--ref-model", args.ref_model),
                ("--dpo-beta", args.dpo_beta != 0.1),
                ("--dpo-label-smoothing", args.dpo_label_smoothing != 0.0),
                ("--pref-ftx", args.pref_ftx != 0.0),
                ("--simpo-gamma", args.simpo_gamma != 0.5),
                ("--refer-model-iter", args.refer_model_iter != 1),
            )
            if on
        ]
        if given:
            raise DpoError(
                f"{given[0]} applies to preference alignment: add --stage dpo (or simpo / orpo) to "
                "posttrain_gpt.py, or drop the flag"
            )
        return
    loss = loss_type_of(args)
    if stage in REFERENCE_FREE_LOSSES and loss != stage:
        raise DpoError(
            f"--stage {stage} with --dpo-loss-type {loss}: drop --dpo-loss-type (the stage is the "
            f"loss) or use --stage dpo --dpo-loss-type {loss}"
        )
    if getattr(args, "is_instruction_dataset", False):
        raise DpoError(
            f"--stage {stage} trains on pairwise data, not instruction data: drop "
            "--is-instruction-dataset (preprocess with --handler-name AlpacaStylePairwiseHandler)"
        )
    if not args.dpo_beta > 0:
        raise DpoError(f"--dpo-beta must be positive, got {args.dpo_beta}")
    if not 0.0 <= args.dpo_label_smoothing < 0.5:
        raise DpoError(f"--dpo-label-smoothing must be in [0, 0.5), got {args.dpo_label_smoothing}")
    if args.dpo_label_smoothing and loss not in ("sigmoid", "simpo"):
        raise DpoError(f"--dpo-label-smoothing applies to the sigmoid and simpo losses, not {loss}: drop it")
    if args.pref_ftx < 0:
        raise DpoError(f"--pref-ftx must be >= 0, got {args.pref_ftx}")
    if args.simpo_gamma != 0.5 and loss != "simpo":
        raise DpoError(f"--simpo-gamma applies to the simpo loss, not {loss}: drop it")
    if args.refer_model_iter < 0:
        raise DpoError(f"--refer-model-iter must be >= 0, got {args.refer_model_iter}")
    if loss in REFERENCE_FREE_LOSSES and args.ref_model:
        raise DpoError(f"--ref-model: the {loss} loss has no reference model; drop --ref-model")
    if args.ref_model and getattr(args, "lora_target_modules", None):
        raise DpoError(
            "--ref-model with --lora-target-modules: a LoRA run's reference is its base model with the "
            "adapters switched off (one copy in memory); drop --ref-model"
        )
    if args.ref_model and not os.path.isdir(args.ref_model):
        raise DpoError(
            f"--ref-model {args.ref_model}: no such folder (a Megatron checkpoint written by "
            "convert_ckpt.py or a training run's --save)"
        )
    if loss in REFERENCE_LOSSES and not args.ref_model and not args.load:
        raise DpoError(
            f"--stage {stage}: the reference model is --ref-model, or the starting weights of --load; "
            "give one of them"
        )
    if getattr(args, "reset_attention_mask", False):
        raise DpoError(f"--reset-attention-mask: pairwise data is not packed (--stage {stage}); drop it")
    if getattr(args, "num_layers_per_virtual_pipeline_stage", None) or getattr(
        args, "virtual_pipeline_model_parallel_size", None
    ):
        raise DpoError(
            f"--num-layers-per-virtual-pipeline-stage is not supported with --stage {stage}: drop it"
        )
    if getattr(args, "mock_data", False) or getattr(args, "train_data_path", None):
        raise DpoError(
            f"--stage {stage} reads one --data-path PREFIX of pairwise data: drop --mock-data / "
            "--train-data-path"
        )


def pairwise_files(prefix: str) -> dict[str, str]:
    """``{chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels}`` -> dataset prefixes."""
    from mindspeed_llm.data.pairwise import pairwise_prefixes

    return pairwise_prefixes(prefix)


def check_pairwise_prefix(prefix: str) -> None:
    """DpoError unless the four datasets of ``--data-path PREFIX`` exist (one line naming what is missing)."""
    paths = pairwise_files(prefix)
    missing = [p for p in paths.values() if not (os.path.isfile(p + ".bin") and os.path.isfile(p + ".idx"))]
    if not missing:
        return
    if len(missing) < len(paths):
        raise DpoError(
            f"--data-path {prefix}: {missing[0]}.bin/.idx not found ({len(paths) - len(missing)} of the "
            "four pairwise datasets are there): preprocess_data.py writes them together; re-run it"
        )
    if os.path.isfile(f"{prefix}_packed_input_ids_document.idx"):
        raise DpoError(
            f"--data-path {prefix} is instruction (SFT) data, not pairwise: preprocess chosen/rejected "
            "rows with --handler-name AlpacaStylePairwiseHandler, or train with --stage sft"
        )
    raise DpoError(
        f"--data-path {prefix}: {missing[0]}.bin/.idx not found; preprocess pairwise data with "
        "preprocess_data.py --handler-name AlpacaStylePairwiseHandler --output-prefix PREFIX"
    )
