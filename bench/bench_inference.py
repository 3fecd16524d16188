"""Decode speed of inference.py's generator: with the KV cache, without it, and transformers' ``generate``.

One process, fp32, CPU. A random Qwen2.5-shaped HF model (made by transformers, saved, converted to
a Megatron checkpoint by convert_ckpt.py's library function, loaded into megatron-core's GPTModel):
the same weights on both sides. A batch of prompts of --context tokens each; decode tokens/s is
``batch x new tokens / time`` from the first generated token to the last (both sides report each token as
it is chosen: our ``on_token`` callback, transformers' ``streamer``), so the prefill is not counted. The
same clock reads the process's CPU time (``time.process_time``): with one thread, the CPU time per
decode step is what a load spike on a shared machine disturbs least. The cases are measured
interleaved, --repeats rounds, and reported as medians, as the median and range of each round's ratios
(the runs of a round ran back to back), and as best against best. Greedy, no stop token. megatron runs
with the kernels the generate scripts ask for (``--use-flash-attn --use-fused-rmsnorm
--use-fused-rotary-pos-emb --use-fused-swiglu``: SDPA with native GQA on the CPU) and inference.py's
patches (``mindspeed_llm.patches.inference``: rotated keys in a static KV cache laid out [batch,
groups, positions, head dim], no autograd functions around the forward math) and the generator's weight
layout (``lay_out_weights_for_decode``: linear weights stored transposed); a fourth case runs the KV
cache with the weights laid out as training keeps them (contiguous), to show what the layout gives.
transformers with its default attention (SDPA), run twice: ``generate(cache_implementation="static")`` (a
preallocated cache, what a transformers user who cares about decode speed asks for) and its default
dynamic cache; the summary line compares with the faster of the two. Both sides share this process, so
the same threads and allocator settings; the output prints both sides' settings. ``--profile``: where
a decode step's time goes (torch.profiler from the first generated token on), ours and ``generate``'s.

    OMP_NUM_THREADS=1 python bench/bench_inference.py [--context 512] [--new-tokens 16] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import mindspeed_llm  # noqa: E402, F401  (device patches)

SHAPE = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=2, vocab_size=32000)


def make_models(folder: str):
    """(transformers model, megatron GPTModel) with the same random weights."""
    from megatron.core import parallel_state as ps
    from transformers import AutoConfig, AutoModelForCausalLM

    from mindspeed_llm.convert.convert import ConvertOptions, convert
    from mindspeed_llm.models.builder import build_gpt_model
    from mindspeed_llm.models.families import ModelConfig
    from mindspeed_llm.runtime.checkpoint import layout
    from mindspeed_llm.runtime.initialize import initialize_distributed

    config = AutoConfig.for_model(
        "qwen2",
        **SHAPE,
        max_position_embeddings=4096,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    hf_dir, mg_dir = os.path.join(folder, "hf"), os.path.join(folder, "mg")
    hf.save_pretrained(hf_dir, safe_serialization=True)
    convert(ConvertOptions(load_model_type="hf", save_model_type="mg", load_dir=hf_dir, save_dir=mg_dir,
                           add_qkv_bias=True, progress=False))
    initialize_distributed()
    ps.initialize_model_parallel()
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    model_parallel_cuda_manual_seed(0)
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        model_config = ModelConfig.from_hf_config(json.load(f))
    mg = build_gpt_model(
        model_config,
        padded_vocab_size=SHAPE["vocab_size"],
        pre_process=True,
        post_process=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    state = layout.load_rank_file(layout.checkpoint_file_for(mg_dir, layout.read_tracker(mg_dir), 0, 0, 1))
    mg.load_state_dict(state["model"], strict=True)
    return hf.eval(), mg.eval()


class StepClock:
    """Wall and CPU times of the first and the last generation step (our on_token callback, transformers'
    streamer)."""

    def __init__(self) -> None:
        self.first = self.last = None  # (wall, cpu) seconds
        self.calls = 0

    def __call__(self, *_) -> None:
        self.last = (time.perf_counter(), time.process_time())
        self.first = self.first or self.last

    def put(self, value) -> None:  # transformers' streamer: the prompt first, then each step's tokens
        self.calls += 1
        if self.calls > 1:
            self()

    def end(self) -> None:
        pass


class ProfiledClock(StepClock):
    """A step clock that starts ``profiler`` at the first generated token: the profile holds the decode
    steps only, not the prefill."""

    def __init__(self, profiler) -> None:
        super().__init__()
        self.profiler = profiler

    def __call__(self, *_) -> None:
        if self.first is None:
            self.profiler.start()
        super().__call__()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--context", type=int, default=512, help="prompt tokens per sequence")
    parser.add_argument("--new-tokens", type=int, default=16, help="decode steps measured")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="instead: torch.profiler over the decode steps of one run of ours and of "
                             "generate (static cache)")
    args = parser.parse_args(argv)

    from mindspeed_llm.inference.generation import Generator, SamplingParams
    from mindspeed_llm.patches.features import enable_feature_patches
    from mindspeed_llm.patches.inference import enable_inference_patches, lay_out_weights_for_decode

    enable_inference_patches(mindspeed_llm.registry, mindspeed_llm.DEVICE)
    enable_feature_patches(use_flash_attn=True, use_fused_rmsnorm=True, use_fused_rotary_pos_emb=True,
                           use_fused_swiglu=True)
    with tempfile.TemporaryDirectory() as folder:
        hf, mg = make_models(folder)
    torch.manual_seed(1)
    prompts = torch.randint(3, SHAPE["vocab_size"], (args.batch, args.context))
    greedy = SamplingParams()
    runners = {
        "megatron, KV cache": Generator(mg, vocab_size=SHAPE["vocab_size"], pad_id=2, use_kv_cache=True),
        "megatron, no KV cache": Generator(mg, vocab_size=SHAPE["vocab_size"], pad_id=2, use_kv_cache=False),
    }

    n = 1 + args.new_tokens  # the first token ends the prefill; the clock runs from it to the last

    def ours(gen: Generator):
        def run(clock: StepClock):
            rows = set()  # one tick per step: the callback fires for every row

            def tick(row: int, token: int) -> None:
                if row in rows or not rows:
                    rows.clear()
                    clock()
                rows.add(row)
            gen.generate(prompts.tolist(), max_new_tokens=n, sampling=greedy, on_token=tick)
        return run

    def transformers_generate(cache: str | None):
        def run(clock: StepClock):
            with torch.no_grad():
                hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                            min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0,
                            streamer=clock, cache_implementation=cache)
        return run

    def as_trained(clock: StepClock):
        """The KV cache run with megatron's own (contiguous) weight layout, re-laid for decoding
        afterwards."""
        for p in mg.parameters():
            p.data = p.data.contiguous()
        try:
            ours(runners["megatron, KV cache"])(clock)
        finally:
            lay_out_weights_for_decode(mg)

    cases = {name: ours(gen) for name, gen in runners.items()}
    cases["KV cache, layout as trained"] = as_trained
    cases["generate, static cache"] = transformers_generate("static")
    cases["generate, dynamic cache"] = transformers_generate(None)
    if args.profile:
        for name in ("megatron, KV cache", "generate, static cache"):
            cases[name](StepClock())  # warm-up
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            clock = ProfiledClock(prof)
            cases[name](clock)
            prof.stop()
            print(f"{name}, the decode steps after the first token ({args.new_tokens} steps, "
                  f"{1000 * (clock.last[0] - clock.first[0]):.1f} ms under the profiler):\n"
                  + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30,
                                              max_name_column_width=56))
        return 0
    rates: dict[str, list[float]] = {name: [] for name in cases}  # wall tokens/s
    cpu_ms: dict[str, list[float]] = {name: [] for name in cases}  # CPU ms per decode step (whole batch)
    for _ in range(args.repeats):  # interleaved: a load spike hits all cases alike
        for name, run in cases.items():
            clock = StepClock()
            run(clock)
            rates[name].append(args.batch * args.new_tokens / (clock.last[0] - clock.first[0]))
            cpu_ms[name].append(1000 * (clock.last[1] - clock.first[1]) / args.new_tokens)

    # The two implementations agree on what they generate (a sanity check of "same model").
    same = runners["megatron, KV cache"].generate(prompts.tolist(), max_new_tokens=8, sampling=greedy)
    with torch.no_grad():
        ref = hf.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=8,
            min_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[:, args.context :].tolist()
    print(f"decode, fp32, {os.uname().machine} {os.cpu_count()} cores, {torch.get_num_threads()} thread(s) "
          f"on both sides (one process), batch {args.batch}, context {args.context}, "
          f"{args.new_tokens} new tokens, {args.repeats} interleaved rounds; load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    import transformers

    threads = torch.get_num_threads()
    print(f"our settings: inference.py's Generator (megatron-core static inference context, the KV cache "
          f"stored [batch, groups, positions, head dim], linear weights laid out for decoding), "
          f"--use-flash-attn --use-fused-rmsnorm --use-fused-rotary-pos-emb --use-fused-swiglu, fp32, "
          f"{threads} thread(s)")
    print(f"peer settings: transformers {transformers.__version__} generate(cache_implementation=\"static\") "
          f"and with its default dynamic cache, attention {hf.config._attn_implementation}, fp32, "
          f"{threads} thread(s); the same process, so the same allocator settings")
    print(
        f"{'':27} {'wall tokens/s':>22} {'KV cache is (wall)':>30} {'CPU ms/step':>18} "
        f"{'KV cache is (CPU)':>30}"
    )
    print(f"{'':27} {'median (best)':>22} {'median of rounds (range)':>30} {'median (best)':>18} "
          f"{'median of rounds (range)':>30}")
    base, base_cpu = rates["megatron, KV cache"], cpu_ms["megatron, KV cache"]
    for name in cases:
        wall = sorted(b / v for b, v in zip(base, rates[name]))  # each round's runs ran back to back
        cpu = sorted(v / b for b, v in zip(base_cpu, cpu_ms[name]))
        print(f"{name:27} {statistics.median(rates[name]):12.1f} ({max(rates[name]):7.1f}) "
              f"{statistics.median(wall):15.2f}x ({wall[0]:.2f}-{wall[-1]:.2f}) "
              f"{statistics.median(cpu_ms[name]):9.2f} ({min(cpu_ms[name]):6.2f}) "
              f"{statistics.median(cpu):15.2f}x ({cpu[0]:.2f}-{cpu[-1]:.2f})")
    peers = ("generate, static cache", "generate, dynamic cache")
    best = max(peers, key=lambda name: statistics.median(rates[name]))
    print(f"ours (KV cache) vs {best} (the faster generate, by median wall tokens/s): "
          f"**{statistics.median(base) / statistics.median(rates[best]):.2f}x** wall, "
          f"{statistics.median(cpu_ms[best]) / statistics.median(base_cpu):.2f}x CPU time per step")
    print(f"greedy tokens equal to transformers' (8 steps, whole batch): {same == ref}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
