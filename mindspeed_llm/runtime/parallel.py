"""Process groups the project creates beside megatron-core's (``initialize_model_parallel``'s).

The kernels in :mod:`mindspeed_llm.ops` take their groups as arguments and create none.
"""

from __future__ import annotations

import megatron.core.parallel_state as ps
import torch.distributed as dist

from mindspeed_llm.ops.context_parallel_kernels import hybrid_cp_rank_groups


def initialize_hybrid_cp_groups(ulysses_degree: int, tensor_model_parallel_size: int,
                                pipeline_model_parallel_size: int, context_parallel_size: int) -> list:
    """Create the Ulysses and ring sub-groups of every CP group; returns this rank's ``[ulysses, ring]``.

    They go where megatron-core keeps ``hierarchical_context_parallel_sizes=[U, CP / U]``'s groups
    (``parallel_state``'s hierarchical CP groups, ``ProcessGroupCollection.hcp``): megatron-core
    builds those with einops, which it does not depend on, so they are built here the same way.
    Call after ``initialize_model_parallel``; every rank creates every group, in the same order.
    """
    world = dist.get_world_size()
    tp, pp, cp = tensor_model_parallel_size, pipeline_model_parallel_size, context_parallel_size
    # The rank generator initialize_model_parallel used (its default order): the same CP groups.
    generator = ps.RankGenerator(tp=tp, ep=1, dp=world // (tp * pp * cp), pp=pp, cp=cp,
                                 order="tp-cp-ep-dp-pp")
    rank, mine = dist.get_rank(), None
    for cp_ranks in generator.get_ranks("cp"):
        ulysses, ring = hybrid_cp_rank_groups(cp_ranks, ulysses_degree)
        groups = [(ranks, dist.new_group(ranks)) for ranks in ulysses + ring]
        if rank in cp_ranks:
            if cp_ranks != list(ps.get_context_parallel_global_ranks()):
                raise RuntimeError(f"hybrid CP groups: CP ranks {cp_ranks} differ from megatron-core's "
                                   f"{ps.get_context_parallel_global_ranks()}")
            mine = [g for ranks, g in groups if rank in ranks]
    ps._HIERARCHICAL_CONTEXT_PARALLEL_GROUPS = mine  # noqa: SLF001 (megatron-core's slot for these groups)
    return mine

