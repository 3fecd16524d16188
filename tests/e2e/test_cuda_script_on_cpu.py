"""A megatron-core training script written for CUDA runs unchanged on CPU after `import mindspeed_llm`."""

from pathlib import Path

import pytest

from tests.conftest import torchrun

SCRIPT = Path(__file__).parent / "scripts" / "cuda_style_train.py"


def _losses(stdout: str) -> list[float]:
    return [float(line.split()[2]) for line in stdout.splitlines() if line.startswith("loss ")]


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_cuda_written_script_trains_on_cpu(tp: int, pp: int) -> None:
    proc = torchrun(SCRIPT, str(tp), str(pp), "6")
    losses = _losses(proc.stdout)
    assert len(losses) == 6, proc.stdout
    assert losses[-1] < losses[0] - 0.5, f"loss did not fall: {losses}"
