"""Log-likelihood requests per second: evaluation.py's lm-eval backend (``MegatronLM``) against lm-eval's own
``hf`` backend, on the same weights, requests and batch size.

One process, fp32, CPU. A random Qwen2.5-shaped HF model (made by transformers, converted to a Megatron
checkpoint by convert_ckpt.py's library function, loaded into megatron-core's GPTModel, as
bench_inference.py does). Both sides get the same tokenized requests through lm-eval's
``_loglikelihood_tokens`` (what ``loglikelihood`` calls after tokenizing): the same sorting, batching and
one-token-continuation grouping (lm-eval's ``Collator``) on both. Two workloads: MMLU-like (one context,
four one-token answer letters: one forward row per question) and HellaSwag-like (four multi-token endings:
one row per request). The cases are measured interleaved, --repeats rounds, medians reported; the largest
relative difference of the log-likelihoods between the two sides is printed as a check of "same model".

    OMP_NUM_THREADS=2 python bench/bench_eval.py [--batch 8] [--questions 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import mindspeed_llm  # noqa: E402, F401  (device patches)


def word_tokenizer(folder: str, vocab_size: int):
    """A word-level tokenizer over w0 .. w{vocab-1} (only the models' constructors need one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    return fast


def workloads(questions: int, vocab: int, context: int) -> dict[str, list]:
    """(strings, context ids, continuation ids) requests of each workload (contexts of varying length)."""
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    mmlu, hellaswag = [], []
    for q in range(questions):
        ctx = ids(context - 64 + int(torch.randint(0, 64, (1,), generator=g)))
        mmlu += [((f"q{q}", f"c{c}"), ctx, [100 + c]) for c in range(4)]
        ctx = ids(context // 4 + int(torch.randint(0, 32, (1,), generator=g)))
        hellaswag += [((f"h{q}", f"e{c}"), ctx, ids(16 + c)) for c in range(4)]
    return {"MMLU-like (4 one-token choices)": mmlu, "HellaSwag-like (4 endings of 16-19 tokens)": hellaswag}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--questions", type=int, default=32, help="questions per workload (4 requests each)")
    parser.add_argument("--context", type=int, default=512, help="MMLU-like context tokens (at most)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from bench_inference import SHAPE, make_models
    from lm_eval.models.huggingface import HFLM

    from mindspeed_llm.evaluation.lm import MegatronLM
    from mindspeed_llm.evaluation.server import ModelServer
    from mindspeed_llm.inference.generation import Generator
    from mindspeed_llm.patches.features import enable_feature_patches
    from mindspeed_llm.patches.inference import enable_inference_patches

    enable_inference_patches(mindspeed_llm.registry, mindspeed_llm.DEVICE)
    enable_feature_patches(
        use_flash_attn=True, use_fused_rmsnorm=True, use_fused_rotary_pos_emb=True, use_fused_swiglu=True
    )
    with tempfile.TemporaryDirectory() as folder:
        hf, mg = make_models(folder)
        tokenizer = word_tokenizer(os.path.join(folder, "tok"), SHAPE["vocab_size"])
    vocab = SHAPE["vocab_size"]
    ours = MegatronLM(
        ModelServer(Generator(mg, vocab_size=vocab, pad_id=2), pad_id=2),
        tokenizer,
        max_length=4096,
        batch_size=args.batch,
        stop_ids={2},
    )
    theirs = HFLM(pretrained=hf, tokenizer=tokenizer, batch_size=args.batch, max_length=4096, device="cpu")
    sides = {"mindspeed_llm MegatronLM": ours, "lm-eval hf (transformers)": theirs}
    loads = workloads(args.questions, vocab, args.context)
    rates = {(w, s): [] for w in loads for s in sides}
    answers = {}
    for _ in range(args.repeats):  # interleaved: a load spike hits all cases alike
        for w, requests in loads.items():
            for s, lm in sides.items():
                start = time.perf_counter()
                answers[w, s] = lm._loglikelihood_tokens(requests, disable_tqdm=True)
                rates[w, s].append(len(requests) / (time.perf_counter() - start))
    print(
        f"log-likelihood requests/s, fp32, {torch.get_num_threads()} thread(s), batch {args.batch}, "
        f"{args.questions} questions x 4 requests per workload, {args.repeats} interleaved rounds (median); "
        f"model: Qwen2.5-shaped {SHAPE}; load average {os.getloadavg()[0]:.1f} at the end"
    )
    names = list(sides)
    print(f"{'workload':44} {names[0]:>26} {names[1]:>26} {'ratio':>7} {'max rel diff of ll':>19}")
    for w in loads:
        a, b = (statistics.median(rates[w, s]) for s in names)
        diff = max(abs(x[0] - y[0]) / abs(y[0]) for x, y in zip(answers[w, names[0]], answers[w, names[1]]))
        print(f"{w:44} {a:>26.2f} {b:>26.2f} {a / b:>7.2f} {diff:>19.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
