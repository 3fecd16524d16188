"""The CPU device layer: what megatron-core asks of CUDA is answered by the CPU."""

import subprocess
import sys
import textwrap

import pytest
import torch
from megatron.core.optimizer import clip_grads

import mindspeed_llm  # noqa: F401
from tests.helpers.launch import run_python


def test_factories_and_moves_land_on_cpu() -> None:
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.empty(2, device=torch.cuda.current_device()).device.type == "cpu"
    assert torch.tensor([1.0], device=torch.device("cuda", 0)).device.type == "cpu"
    t = torch.ones(3)
    assert t.cuda() is t
    assert t.to("cuda").device.type == "cpu"
    assert t.to("cuda", dtype=torch.float64).dtype == torch.float64
    assert t.to(device="cuda:1").device.type == "cpu"
    module = torch.nn.Linear(2, 2)
    assert module.cuda() is module and module.to("cuda").weight.device.type == "cpu"
    assert torch.ones(2, pin_memory=True).sum().item() == 2.0


def test_type_strings_only_change_for_megatron_callers() -> None:
    t = torch.ones(2)
    assert t.type() == "torch.FloatTensor"  # our caller: unchanged
    namespace = {"__name__": "megatron.core.optimizer.fake_caller"}
    exec("def ask(t):\n    return t.type()", namespace)  # a caller whose module is megatron-core's
    assert namespace["ask"](t) == "torch.cuda.FloatTensor"
    assert namespace["ask"](t.bfloat16()) == "torch.cuda.BFloat16Tensor"
    assert t.type(torch.float64).dtype == torch.float64


def test_megatron_grad_clipping_runs_on_cpu() -> None:
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 2.0)
    # Upstream asserts param.grad.type() == 'torch.cuda.FloatTensor' and scales on device='cuda'.
    clip_grads.clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=4.0)
    assert torch.allclose(p.grad, torch.full((4,), 0.5), rtol=1e-5)


def test_cuda_rng_state_is_the_cpu_generator_and_tracker_forks() -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, initialize_rng_tracker

    torch.cuda.manual_seed(7)
    a = torch.rand(3)
    torch.cuda.manual_seed(7)
    assert torch.equal(a, torch.rand(3))
    state = torch.cuda.get_rng_state()
    b = torch.rand(3)
    torch.cuda.set_rng_state(state)
    assert torch.equal(b, torch.rand(3))

    initialize_rng_tracker(force_reset=True)
    tracker = get_cuda_rng_tracker()
    tracker.add("stream-a", 123)
    outside = torch.get_rng_state()
    with tracker.fork("stream-a"):
        first = torch.rand(2)
    assert torch.equal(torch.get_rng_state(), outside)  # the default stream is untouched
    with tracker.fork("stream-a"):
        second = torch.rand(2)
    assert not torch.equal(first, second)  # the tracked stream advanced


def test_streams_events_and_memory_stats_answer() -> None:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        pass
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    end.record()
    assert end.elapsed_time(start) <= 0.0 <= start.elapsed_time(end)
    torch.cuda.synchronize()
    torch.cuda.set_device(0)
    assert torch.cuda.memory_allocated() == 0 and torch.cuda.memory_stats() == {}
    torch.cuda.nvtx.range_push("x")
    torch.cuda.nvtx.range_pop()


def _run(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh interpreter (nothing imported yet)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)


def _run_forked(code: str, folder, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """``code`` as a script in ``folder`` (first on ``sys.path``: a stand-in package there is found), forked
    from an interpreter with torch imported (tests.helpers.launch.run_python): what mindspeed_llm's import
    does is unchanged, as nothing of it is preloaded."""
    return run_python(textwrap.dedent(code), folder, env=env_extra)


# The checks below that need a fresh interpreter with the plain environment share one (a process each would
# import torch, megatron-core and the package four times): each section runs in its own try block, in this
# order (the first checks what importing the package loads, before any other section loads more).
_PLAIN_SECTIONS = {
    "import": """
        import importlib.util, sys
        import mindspeed_llm
        assert importlib.util.find_spec("torch_npu") is None and importlib.util.find_spec("apex") is None
        assert "torch_npu" not in sys.modules
        # megatron-core's import-time torch.compile decorations are deferred: no TorchDynamo loaded yet,
        # and torch.compile is torch's own again.
        import torch, megatron.core.jit
        assert "torch._dynamo" not in sys.modules, "megatron-core's import loaded TorchDynamo"
        assert torch.compile.__module__ == "torch" and megatron.core.jit.jit_fuser is not torch.compile
        print(mindspeed_llm.DEVICE)
    """,
    "nccl": """
        import mindspeed_llm, torch
        torch.distributed.init_process_group("nccl", init_method="file://{tmp}/pg_nccl", rank=0, world_size=1)
        group = torch.distributed.new_group([0], backend="nccl")
        torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
        print(torch.distributed.get_backend(), torch.distributed.get_backend(group))
        torch.distributed.destroy_process_group()
    """,
    # Regression: wrapping torch's factories before torch cached its list of them made transformers'
    # meta-device model construction leak uninitialised memory into RoPE's inv_freq.
    "transformers": """
        import mindspeed_llm, torch
        from transformers import Qwen2Config, Qwen2ForCausalLM
        config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0)
        Qwen2ForCausalLM(config).save_pretrained("{tmp}/m")
        model = Qwen2ForCausalLM.from_pretrained("{tmp}/m")
        expected = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
        torch.testing.assert_close(model.model.rotary_emb.inv_freq, expected)
        print("ok")
    """,
    # Regression: one function object under several torch.cuda names made torch._dynamo refuse its map of
    # torch objects ("Duplicate torch object _noop") when megatron's jit-fused SwiGLU first ran.
    "fused": """
        import mindspeed_llm, torch
        import torch.nn.functional as F
        torch.distributed.init_process_group("nccl", init_method="file://{tmp}/pg_fused", rank=0,
                                             world_size=1)
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
        parallel_state.initialize_model_parallel(1, 1)
        model_parallel_cuda_manual_seed(1)
        from megatron.core.models.gpt import GPTModel
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
        from megatron.core.transformer.transformer_config import TransformerConfig
        config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4,
                                   gated_linear_unit=True, activation_func=F.silu,
                                   bias_activation_fusion=True, add_bias_linear=False,
                                   normalization="RMSNorm")
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        model = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=64, max_sequence_length=16)
        print(model(torch.randint(0, 64, (1, 8)), torch.arange(8)[None], None).shape)
        torch.distributed.destroy_process_group()
    """,
}
_MARK = "=== section "


@pytest.fixture(scope="module")
def plain_child(tmp_path_factory) -> dict[str, str]:
    """{section: what it printed, or "FAILED" and its traceback}: _PLAIN_SECTIONS run in one fresh
    interpreter with the plain environment."""
    tmp = tmp_path_factory.mktemp("plain_child")
    driver = ["import sys, textwrap, traceback", "sections = {}"]
    for name, code in _PLAIN_SECTIONS.items():
        driver.append(f"sections[{name!r}] = {textwrap.dedent(code).replace('{tmp}', str(tmp))!r}")
    driver += [
        "for name, code in sections.items():",
        f"    print({_MARK!r} + name, flush=True)",
        "    try:",
        "        exec(compile(code, f'<section {name}>', 'exec'), {'__name__': '__main__'})",
        "    except BaseException:",
        "        print('FAILED'); traceback.print_exc(file=sys.stdout)",
        "    sys.stdout.flush()",
    ]
    proc = _run("\n".join(driver))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = proc.stdout.split(_MARK)[1:]
    found = {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in parts}
    assert list(found) == list(_PLAIN_SECTIONS), proc.stdout[-3000:] + proc.stderr[-3000:]
    return found


def _section(plain_child: dict[str, str], name: str) -> str:
    out = plain_child[name]
    assert not out.startswith("FAILED"), out[-3000:]
    return out


def test_import_without_torch_npu_and_apex(plain_child) -> None:
    assert _section(plain_child, "import").strip() == "cpu"


def test_deferred_torch_compile_compiles_on_the_first_call() -> None:
    from mindspeed_llm.patches.device import compile_on_first_call

    calls = []

    def recording_compile(fn, **options):
        calls.append(options)
        return torch.compile(fn, **options)

    @compile_on_first_call(recording_compile)(backend="eager")
    def gated(x):
        return torch.nn.functional.silu(x) * 2

    assert calls == [] and gated.__name__ == "gated"
    x = torch.randn(5)
    torch.testing.assert_close(gated(x), x * torch.sigmoid(x) * 2)
    torch.testing.assert_close(gated(x + 1), (x + 1) * torch.sigmoid(x + 1) * 2)
    assert calls == [{"backend": "eager"}]  # compiled once, with the decorator's options


def test_import_with_an_unusable_torch_npu(tmp_path) -> None:
    # Stand-in for a torch_npu wheel installed without Ascend's CANN: its import raises, as the real
    # one does ("ImportError: libhccl.so"). Detection must treat that as "no NPU", not crash.
    fake = tmp_path / "torch_npu"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        'raise ImportError("libhccl.so: cannot open shared object file (stand-in)")\n')
    proc = _run_forked("import mindspeed_llm; print(mindspeed_llm.DEVICE)", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cpu"
    # Said, not swallowed: one warning naming the error.
    assert ("NpuUnusableWarning: torch_npu is installed but does not import (ImportError: libhccl.so: "
            "cannot open shared object file (stand-in)): running without an NPU") in proc.stderr
    (fake / "__init__.py").write_text(
        'raise RuntimeError("Failed to load the backend extension (stand-in)")\n')
    proc = _run_forked("import mindspeed_llm; print(mindspeed_llm.DEVICE)", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "does not import (RuntimeError: Failed to load the backend extension (stand-in))" in proc.stderr
    proc = _run_forked("import mindspeed_llm", tmp_path, env_extra={"MINDSPEED_LLM_DEVICE": "npu"})
    assert proc.returncode != 0
    assert ("MINDSPEED_LLM_DEVICE=npu but torch_npu cannot be imported (RuntimeError: Failed to load the "
            "backend extension (stand-in)): install torch_npu and Ascend CANN") in proc.stderr


def test_device_override_is_validated(tmp_path) -> None:
    proc = _run_forked("import mindspeed_llm", tmp_path, env_extra={"MINDSPEED_LLM_DEVICE": "tpu"})
    assert proc.returncode != 0 and "MINDSPEED_LLM_DEVICE='tpu'" in proc.stderr


def test_nccl_process_group_becomes_gloo(plain_child) -> None:
    assert _section(plain_child, "nccl").split() == ["gloo", "gloo"]


def _write_torch_npu_stand_in(root) -> None:
    """A stand-in for torch_npu on a machine without Ascend hardware (NOT the real package).

    It reports one NPU and records that ``torch_npu.contrib.transfer_to_npu`` was imported, so the
    detection and redirect plumbing of the NPU path can be checked here.
    """
    pkg = root / "torch_npu"
    (pkg / "contrib").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        '"""Stand-in for torch_npu in tests (no Ascend hardware here)."""\n'
        "import types\n"
        "npu = types.SimpleNamespace(is_available=lambda: True)\n"
        "transfer_imported = False\n"
    )
    (pkg / "contrib" / "__init__.py").write_text("")
    (pkg / "contrib" / "transfer_to_npu.py").write_text(
        "import torch_npu\ntorch_npu.transfer_imported = True\n")


def test_npu_detection_imports_torch_npus_redirect_and_uses_hccl(tmp_path) -> None:
    _write_torch_npu_stand_in(tmp_path)
    proc = _run_forked("""
        import torch, torch_npu, mindspeed_llm
        from mindspeed_llm.patches.device import distributed_backend
        print(mindspeed_llm.DEVICE, distributed_backend(), torch_npu.transfer_imported)
        print(torch.cuda.current_device.__module__)  # the CPU layer is not applied on NPU
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first.split() == ["npu", "hccl", "True"]
    assert second == "torch.cuda"


def test_forcing_npu_without_torch_npu_is_a_clear_error(tmp_path) -> None:
    proc = _run_forked("import mindspeed_llm", tmp_path, env_extra={"MINDSPEED_LLM_DEVICE": "npu"})
    assert proc.returncode != 0 and "torch_npu cannot be imported (not installed)" in proc.stderr


def test_transformers_builds_models_correctly_after_import(plain_child) -> None:
    assert _section(plain_child, "transformers").strip() == "ok"


def test_megatron_fused_kernels_compile_after_process_group_init(plain_child) -> None:
    assert "torch.Size(" in _section(plain_child, "fused")  # the model ran
