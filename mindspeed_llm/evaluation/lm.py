"""lm-evaluation-harness's model interface over a Megatron checkpoint (any TP/PP/EP): :class:`MegatronLM`.

It is an lm-eval ``TemplateLM``, so requests are tokenized exactly as lm-eval's ``hf`` backend does
(context/continuation split, empty-context prefix token, BOS rules of the tokenizer), and the batching
follows that backend: requests sorted longest first, batches of ``batch_size``, right padding, one forward
per batch, the one-token continuations of a shared context scored from one row (lm-eval's ``Collator``).
A sequence longer than the model's window is left-truncated as lm-eval does, and counted
(:attr:`MegatronLM.truncated`). Scores come from :class:`~mindspeed_llm.evaluation.server.ModelServer` on
rank 0; the built-in tasks (``mindspeed_llm.evaluation.tasks``) score through the same methods.
"""

from __future__ import annotations

import logging

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    Collator,
    _add_special_kwargs,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from mindspeed_llm.evaluation.server import ModelServer
from mindspeed_llm.inference.generation import SamplingParams

logger = logging.getLogger("mindspeed_llm.evaluation")

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's hf backend's default for a task that sets none


class MegatronLM(TemplateLM):
    """lm-eval's ``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until`` on the Megatron model."""

    def __init__(
        self,
        server: ModelServer,
        hf_tokenizer,
        *,
        max_length: int,
        batch_size: int,
        stop_ids: set[int],
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        add_bos_token: bool | None = None,
        name: str = "megatron",
    ) -> None:
        super().__init__()
        self.server = server
        self.tokenizer = hf_tokenizer
        self._max_length = max_length
        self._batch_size = batch_size
        self.stop_ids = set(stop_ids)
        self._max_gen_toks = max_gen_toks
        self.add_bos_token = add_bos_token
        self.name = name
        self.truncated = 0  # requests whose tokens were cut on the left to fit the window

    # ---- lm-eval's model properties ----------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context is conditioned on: BOS, else EOS (as lm-eval's hf backend)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(
        self,
        string: str,
        add_special_tokens: bool | None = None,
        left_truncate_len: int | None = None,
        **kwargs,
    ) -> list[int]:
        """Token ids of ``string`` with the tokenizer's special-token rules (BOS not doubled)."""
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        ids = self.tokenizer.encode(string, **special)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ---- scoring -----------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """(log-probability of the continuation, whether it is the greedy one) per (strings, context ids,
        continuation ids) request."""
        order = Collator(
            requests,
            sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])),
            group_by="contexts",
            group_fn=lambda r: r[-2] + r[-1][:-1],
        )
        results = []
        for chunk in order.get_batched(n=override_bs or self.batch_size):
            sequences, spans = [], []
            for _, context, continuation in chunk:
                whole = context + continuation
                if len(whole) > self.max_length + 1:
                    self.truncated += 1
                window = whole[-(self.max_length + 1) :][:-1]
                sequences.append(window)
                spans.append((len(window) - len(continuation), len(window)))
            log_probs = self.server.log_probs(sequences, spans)
            for (strings, context, continuation), rows in zip(chunk, log_probs):
                rows = rows.unsqueeze(0)  # [1, continuation, vocab]
                greedy = rows.argmax(dim=-1)
                for _, cont, cont_rows in order.get_cache(
                    req_str=strings, cxt_toks=context, cont_toks=continuation, logits=rows
                ):
                    cont_ids = torch.tensor(cont, dtype=torch.long).unsqueeze(0)
                    is_greedy = bool((greedy[:, -cont_ids.shape[1] :] == cont_ids).all())
                    picked = torch.gather(cont_rows, 2, cont_ids.unsqueeze(-1)).squeeze(-1)
                    results.append((float(picked.sum()), is_greedy))
        return order.get_original(results)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-probability of whole texts, in disjoint windows of the model's length (lm-eval's
        perplexity)."""
        windows, counts = [], []
        for (text,) in (r.args for r in requests):
            rolling = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            windows += [((None, None), context, continuation) for context, continuation in rolling]
            counts.append(len(rolling))
        scores = []
        for first in range(0, len(windows), self.batch_size):
            batch = windows[first : first + self.batch_size]
            scores += [ll for ll, _ in self._loglikelihood_tokens(batch, override_bs=len(batch))]
        totals, at = [], 0
        for count in counts:
            totals.append(sum(scores[at : at + count]))
            at += count
        return totals

    # ---- generation --------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each request's continuation up to its first stop string (EOS always stops)."""
        order = Collator(
            [r.args for r in requests],
            sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]),
            group_by="gen_kwargs",
            group_fn=lambda r: r[1],
        )
        results = []
        for chunk in order.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            results += self.generate_texts(list(contexts), all_kwargs[0])
        return order.get_original(results)

    def generate_texts(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        """One batch: the continuations of ``contexts`` under lm-eval's generation arguments (``until``,
        ``max_gen_toks``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``)."""
        kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
        until = handle_stop_sequences(
            kwargs.pop("until", None), eos=self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        )
        max_gen_toks = kwargs.pop("max_gen_toks")
        max_context = self.max_length - max_gen_toks
        if max_context <= 0:
            raise ValueError(
                f"max_gen_toks {max_gen_toks} leaves no room for a prompt in the model's "
                f"{self.max_length} positions"
            )
        prompts = []
        for context in contexts:
            ids = self.tok_encode(context)
            if len(ids) > max_context:
                self.truncated += 1
            prompts.append(ids[-max_context:])
        sampling = SamplingParams(greedy=True)
        if kwargs.get("do_sample"):
            sampling = SamplingParams(
                greedy=False,
                temperature=kwargs.get("temperature") or 1.0,
                top_k=kwargs.get("top_k"),
                top_p=kwargs.get("top_p"),
            )
        outputs = self.server.generate(prompts, max_gen_toks, self.stop_ids, sampling)
        return [postprocess_generated_text(self.tok_decode(tokens), until, None) for tokens in outputs]

    # ---- the built-in tasks' entry -----------------------------------------------------------------------
    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """``loglikelihood`` for (context, continuation) strings (a non-empty context each)."""
        requests = [((c, x), *self._encode_pair(c, x)) for c, x in pairs]
        return self._loglikelihood_tokens(requests)

    def report_truncation(self) -> None:
        """Log how many requests were left-truncated (once, at the end)."""
        if self.truncated:
            logger.warning(
                "%d request(s) were longer than the model's %d positions and were left-truncated "
                "(as lm-eval does)",
                self.truncated,
                self.max_length,
            )
