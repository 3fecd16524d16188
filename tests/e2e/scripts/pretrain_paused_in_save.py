"""pretrain_gpt.py whose checkpoint save of one iteration stops short of publishing, for tests that kill a run
there.

    torchrun ... tests/e2e/scripts/pretrain_paused_in_save.py N <pretrain_gpt.py flags>

Everything is pretrain_gpt.py's own main, but the formats' ``publish_save`` step (the renames of a
save's files into place and the tracker after them) is wrapped: in the save of iteration N, global
rank 0 prints ``MINDSPEED_LLM_TEST: paused in checkpoint save at iteration N`` once every new file
is written under its temporary name, and sleeps until the process is killed or signalled.
"""

# As pretrain_gpt.py: the package applies the patches when told to, not at import.
MINDSPEED_LLM_LATE_PATCHES = True

import functools  # noqa: E402
import runpy  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import mindspeed_llm  # noqa: E402

PRETRAIN = Path(__file__).resolve().parents[3] / "pretrain_gpt.py"


def paused_at(iteration: int, publish):
    """``publish`` (a format's ``publish_save(_, iteration, ...)``) that rank 0 holds back at
    ``iteration``."""
    import torch

    @functools.wraps(publish)
    def paused(*args, **kwargs):
        if args[1] == iteration and torch.distributed.get_rank() == 0:
            print(f"MINDSPEED_LLM_TEST: paused in checkpoint save at iteration {iteration}", flush=True)
            while True:
                time.sleep(1)
        return publish(*args, **kwargs)

    return paused


if __name__ == "__main__":
    pause_at = int(sys.argv.pop(1))
    # the device layer before megatron-core is imported (pretrain_gpt.py's order)
    mindspeed_llm.apply_base_patches()
    from mindspeed_llm.runtime.checkpoint import dist_format, torch_format

    for fmt in (torch_format, dist_format):
        fmt.publish_save = paused_at(pause_at, fmt.publish_save)
    sys.argv[0] = str(PRETRAIN)
    runpy.run_path(str(PRETRAIN), run_name="__main__")
