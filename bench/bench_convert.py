"""convert_ckpt.py on a Qwen2.5-7B-shaped random bf16 checkpoint (~15 GB, 4 shards) -> TP1 PP4.

Reports wall time and peak RSS (``/usr/bin/time -v``) against a plain copy of the same bytes, and the
largest output file (the memory floor: one stage must be built before ``torch.save`` writes it).
Needs ~47 GB free under --workdir and several minutes, so it only runs when asked (``--run`` or
BENCH_CONVERT=1); ``make bench`` and CI otherwise get a one-line skip.

    python bench/bench_convert.py --run [--workdir /tmp/bench_convert] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import torch
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(layers=28, hidden=3584, ffn=18944, heads=28, groups=4, vocab=152064)


def config() -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": SHAPE["hidden"],
        "intermediate_size": SHAPE["ffn"],
        "num_hidden_layers": SHAPE["layers"],
        "num_attention_heads": SHAPE["heads"],
        "num_key_value_heads": SHAPE["groups"],
        "vocab_size": SHAPE["vocab"],
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1e6,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "use_sliding_window": False,
    }


def tensor_shapes() -> list[tuple[str, tuple[int, ...]]]:
    h, f, v = SHAPE["hidden"], SHAPE["ffn"], SHAPE["vocab"]
    d = h // SHAPE["heads"]
    kv = SHAPE["groups"] * d
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(SHAPE["layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.q_proj.bias", (h,)),
                (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.k_proj.bias", (kv,)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.v_proj.bias", (kv,)),
                (p + "self_attn.o_proj.weight", (h, h)), (p + "mlp.gate_proj.weight", (f, h)),
                (p + "mlp.up_proj.weight", (f, h)), (p + "mlp.down_proj.weight", (h, f))]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


def make_checkpoint(folder: str, num_shards: int = 4) -> int:
    """Write the random checkpoint shard by shard (one shard in memory at a time); returns total bytes."""
    os.makedirs(folder, exist_ok=True)
    shapes = tensor_shapes()
    total = sum(2 * torch.Size(s).numel() for _, s in shapes)
    per_shard = total / num_shards
    weight_map, shard, shard_bytes, k = {}, {}, 0, 0
    gen = torch.Generator().manual_seed(0)

    def flush():
        nonlocal shard, shard_bytes, k
        name = f"model-{k + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file(shard, os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update({n: name for n in shard})
        shard, shard_bytes, k = {}, 0, k + 1

    for name, shape in shapes:
        t = torch.empty(shape, dtype=torch.bfloat16)
        t.uniform_(-0.05, 0.05, generator=gen)
        shard[name] = t
        shard_bytes += t.numel() * 2
        if shard_bytes >= per_shard and k < num_shards - 1:
            flush()
    flush()
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config(), f, indent=2)
    return total


def timed(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a command under /usr/bin/time -v."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return wall, rss_kb * 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench_convert")
    parser.add_argument("--keep", action="store_true", help="keep the files (default: delete them)")
    parser.add_argument("--run", action="store_true", help="run it (it needs ~47 GB of disk and minutes)")
    args = parser.parse_args()
    if not (args.run or os.environ.get("BENCH_CONVERT") == "1"):
        print("bench_convert: skipped (needs ~47 GB disk and minutes): python bench/bench_convert.py --run")
        return 0
    if not os.path.exists("/usr/bin/time"):
        sys.exit("/usr/bin/time is needed for peak RSS (apt-get install time)")
    hf, copy, mg = (os.path.join(args.workdir, n) for n in ("hf", "copy", "mg"))
    if shutil.disk_usage(os.path.dirname(os.path.abspath(args.workdir))).free < 47e9:
        sys.exit(f"bench_convert: needs ~47 GB free beside {args.workdir}")
    shutil.rmtree(args.workdir, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        total = make_checkpoint(hf)
        print(
            f"made {total / 1e9:.2f} GB random bf16 checkpoint in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        copy_s, copy_rss = timed(["cp", "-r", hf, copy])
        shutil.rmtree(copy)
        conv_s, conv_rss = timed(
            [
                sys.executable,
                "convert_ckpt.py",
                "--use-mcore-models",
                "--model-type",
                "GPT",
                "--load-model-type",
                "hf",
                "--save-model-type",
                "mg",
                "--target-tensor-parallel-size",
                "1",
                "--target-pipeline-parallel-size",
                "4",
                "--add-qkv-bias",
                "--model-type-hf",
                "llama2",
                "--load-dir",
                hf,
                "--save-dir",
                mg,
                "--no-progress",
            ]
        )
        largest = max(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(mg) for f in fs)
        back = os.path.join(args.workdir, "back")
        back_s, back_rss = timed(
            [
                sys.executable,
                "convert_ckpt.py",
                "--load-model-type",
                "mg",
                "--save-model-type",
                "hf",
                "--load-dir",
                mg,
                "--save-dir",
                back,
                "--no-progress",
            ]
        )
        shutil.rmtree(mg)
        print()
        print("| step | wall time (s) | peak RSS (GB) |")
        print("|---|---|---|")
        print(f"| plain copy (`cp -r`, {total / 1e9:.1f} GB) | {copy_s:.1f} | {copy_rss / 1e9:.2f} |")
        print(f"| convert_ckpt.py hf -> mg TP1 PP4 | {conv_s:.1f} | {conv_rss / 1e9:.2f} |")
        print(f"| convert_ckpt.py mg TP1 PP4 -> hf (5 GB shards) | {back_s:.1f} | {back_rss / 1e9:.2f} |")
        print()
        print(
            f"largest output file: {largest / 1e9:.2f} GB; peak RSS / largest file = "
            f"{conv_rss / largest:.2f} (goal <= 1.25); time / copy = {conv_s / copy_s:.2f} (goal <= 2)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
