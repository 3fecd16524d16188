"""Entry point of ``preprocess_data.py``: parse flags, run, turn user errors into one line + exit 2."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mindspeed_llm.console import print_error, write_line
from mindspeed_llm.data.errors import PreprocessError


def main(argv: Sequence[str] | None = None) -> int:
    """Run preprocess_data.py with ``argv``; returns the process exit status."""
    from mindspeed_llm.data.arguments import parse_args

    try:
        args = parse_args(argv)  # before the heavy imports (pyarrow, transformers): --help answers at once
        from mindspeed_llm.data.preprocess import merge_datasets, preprocess

        if args.merge_group_keys:
            merge_datasets(args)
        else:
            preprocess(args)
    except PreprocessError as exc:
        print_error(str(exc))
        return 2
    except KeyboardInterrupt:
        write_line("interrupted: no output was written", sys.stderr)
        return 130
    return 0
