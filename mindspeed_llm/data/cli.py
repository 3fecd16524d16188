"""Entry point of ``preprocess_data.py``: parse flags, run, turn user errors into one line + exit 2."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mindspeed_llm.data.errors import PreprocessError


def main(argv: Sequence[str] | None = None) -> int:
    """Run preprocess_data.py with ``argv``; returns the process exit status."""
    from mindspeed_llm.data.arguments import parse_args
    from mindspeed_llm.data.preprocess import merge_datasets, preprocess

    try:
        args = parse_args(argv)
        if args.merge_group_keys:
            merge_datasets(args)
        else:
            preprocess(args)
    except PreprocessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        return 130
    return 0
