"""The model behind an evaluation, driven from rank 0: every rank holds its TP/PP shard, rank 0 decides.

Evaluation code (lm-evaluation-harness's evaluator, the built-in tasks) runs on rank 0 only. Each model call
there (:meth:`ModelServer.log_probs`, :meth:`ModelServer.generate`) first broadcasts the request to every
rank; all ranks then run the same forward passes of their shard (megatron-core passes the activations
between pipeline stages and gathers the tensor-parallel logits), and the answer reaches rank 0. The other
ranks sit in :meth:`ModelServer.serve` until rank 0 says stop (or that it failed: then they fail too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mindspeed_llm.inference.generation import Generator, SamplingParams

_STOP, _ABORT, _LOG_PROBS, _GENERATE = "stop", "abort", "log_probs", "generate"
GREEDY = SamplingParams()


class PeerAborted(RuntimeError):
    """Rank 0 failed during the evaluation (its own message says why)."""


class ModelServer:
    """One rank's model chunk answering rank 0's requests (log-probabilities, greedy or sampled tokens)."""

    def __init__(self, generator: Generator, pad_id: int) -> None:
        from megatron.core import parallel_state as ps

        self.generator = generator
        self.pad_id = pad_id
        self.rank = torch.distributed.get_rank()
        self.last_stage = ps.is_pipeline_last_stage(ignore_virtual=True)
        # rank 0's pipeline ends at this global rank: the one holding rank 0's logits (itself without PP)
        self.logits_rank = ps.get_pipeline_model_parallel_last_rank() if self.rank == 0 else None
        self._last_of_rank0 = self.rank == _broadcast_int(self.logits_rank)

    # ---- rank 0 -------------------------------------------------------------------------------------------
    def log_probs(
        self, sequences: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]
    ) -> list[torch.Tensor]:
        """Log-softmax over the vocabulary (float32) of each sequence's positions ``spans[i] = (start, end)``:
        row ``j`` of the answer predicts token ``start + j + 1``. One forward pass of the right-padded
        batch."""
        return self._call(_LOG_PROBS, ([list(s) for s in sequences], [tuple(s) for s in spans]))

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop_ids: set[int],
        sampling: SamplingParams = GREEDY,
    ) -> list[list[int]]:
        """Each prompt's new tokens (ending with the first of ``stop_ids`` if one came)."""
        return self._call(_GENERATE, ([list(p) for p in prompts], max_new_tokens, set(stop_ids), sampling))

    def stop(self, failed: bool = False) -> None:
        """Release the other ranks (``failed``: they raise :class:`PeerAborted`)."""
        torch.distributed.broadcast_object_list([(_ABORT if failed else _STOP, None)], src=0)

    def _call(self, op: str, payload):
        torch.distributed.broadcast_object_list([(op, payload)], src=0)
        return self._execute(op, payload)

    # ---- every other rank ---------------------------------------------------------------------------------
    def serve(self) -> None:
        """Answer rank 0's requests until it stops."""
        while True:
            message = [None]
            torch.distributed.broadcast_object_list(message, src=0)
            op, payload = message[0]
            if op == _STOP:
                return
            if op == _ABORT:
                raise PeerAborted("rank 0 stopped the evaluation")
            self._execute(op, payload)

    # ---- every rank ---------------------------------------------------------------------------------------
    def _execute(self, op: str, payload):
        if op == _GENERATE:
            prompts, max_new_tokens, stop_ids, sampling = payload
            return self.generator.generate(
                prompts, max_new_tokens=max_new_tokens, sampling=sampling, stop_ids=stop_ids
            )
        sequences, spans = payload
        return self._log_probs(sequences, spans)

    def _log_probs(self, sequences, spans) -> list[torch.Tensor] | None:
        length = max(len(s) for s in sequences)
        tokens = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        for row, seq in enumerate(sequences):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        first = min(start for start, _ in spans)  # no row needs the logits of an earlier position
        logits = self.generator.forward_logits(tokens, first)
        width = max(end - start for start, end in spans)
        vocab = self.generator.vocab_size
        out = None
        if self.last_stage and self._last_of_rank0:
            out = torch.zeros(len(sequences), width, vocab, dtype=torch.float32, device=logits.device)
            for row, (start, end) in enumerate(spans):
                out[row, : end - start] = torch.log_softmax(logits[row, start - first:end - first].float(),
                                                            dim=-1)
        if self.rank != 0 and self._last_of_rank0:
            torch.distributed.send(out, dst=0)
            return None
        if self.rank != 0:
            return None
        if out is None:  # rank 0 is not on the last stage: its pipeline's last rank sends the rows
            out = torch.empty(
                len(sequences), width, vocab, dtype=torch.float32, device=torch.cuda.current_device()
            )
            torch.distributed.recv(out, src=self.logits_rank)
        return [out[row, : end - start].cpu() for row, (start, end) in enumerate(spans)]


def _broadcast_int(value: int | None) -> int:
    shared = [value]
    torch.distributed.broadcast_object_list(shared, src=0)
    return int(shared[0])
