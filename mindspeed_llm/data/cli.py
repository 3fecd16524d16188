"""Entry point of ``preprocess_data.py``: parse flags, run, turn user errors into one line + exit 2."""

from __future__ import annotations

from collections.abc import Sequence

from mindspeed_llm.console import print_error
from mindspeed_llm.data.errors import OutputWriteError, PreprocessError
from mindspeed_llm.signals import Terminated, exit_on_signals, exit_status


def main(argv: Sequence[str] | None = None) -> int:
    """Run preprocess_data.py with ``argv``; returns the process exit status.

    0 done, 1 the output could not be written (disk full, read-only), 2 bad flags or input,
    130 Ctrl-C, 143 SIGTERM; every failure is one ``error:`` line and no earlier output is changed.
    """
    from mindspeed_llm.data.arguments import parse_args

    with exit_on_signals():
        try:
            args = parse_args(
                argv
            )  # before the heavy imports (pyarrow, transformers): --help answers at once
            from mindspeed_llm.data.preprocess import merge_datasets, preprocess

            if args.merge_group_keys:
                merge_datasets(args)
            else:
                preprocess(args)
        except PreprocessError as exc:
            print_error(str(exc))
            return 2
        except OutputWriteError as exc:
            print_error(str(exc))
            return 1
        except (KeyboardInterrupt, Terminated) as exc:
            what = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else "terminated (SIGTERM)"
            print_error(f"{what}: temporary files removed, no earlier output was changed")
            return exit_status(exc)
    return 0
