"""The graph gate: the reference model compiles to one graph, never recompiles, and stays tied.

A graph break splits the model into pieces that run with Python in between (slower, and each piece is
optimized alone); a recompile means a guard failed, e.g. because a weight update changed something dynamo
specialized on. Either would be a regression of the tied reference model, so both must be zero.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.compile_gates import GraphCounter, count_graph_breaks
from benchmarks.conftest import CompiledCase, forward_with_targets, is_tied, make_gate_gpt


@pytest.mark.parametrize("mode", ["inference", "training"])
def test_reference_forward_has_no_graph_breaks(
    mode: str, gate_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    model = make_gate_gpt()
    idx, targets = gate_batch
    if mode == "inference":
        model.eval()
        with torch.no_grad():
            breaks = count_graph_breaks(model, idx)
    else:
        breaks = count_graph_breaks(model, idx, targets)
    assert (breaks.graph_count, breaks.graph_break_count) == (1, 0), (
        f"nanoGPT {mode} forward: {breaks.graph_count} graphs, {breaks.graph_break_count} breaks:\n"
        + "\n".join(breaks.reasons)
    )


def test_reference_forward_backward_is_one_graph_each_way(
    gate_batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    counter = GraphCounter()
    torch._dynamo.reset()
    # fullgraph=True turns any graph break into an error that names it.
    compiled = torch.compile(make_gate_gpt(), backend=counter, fullgraph=True)
    _, loss = forward_with_targets(compiled, *gate_batch)
    loss.backward()
    graphs = (counter.dynamo_graphs, counter.forward_graphs, counter.backward_graphs)
    assert graphs == (1, 1, 1), (
        f"(dynamo, AOT forward, AOT backward) graphs: expected (1, 1, 1), got {graphs}"
    )
    assert all(p.grad is not None for p in compiled.parameters()), "a parameter got no gradient"


def test_no_recompiles_across_training_steps(compiled_case: CompiledCase) -> None:
    run = compiled_case.run
    assert run.graphs_per_step[0] >= 1, (
        f"{compiled_case.name}: the first step compiled nothing; not compiled?"
    )
    assert run.recompiles == 0, (
        f"{compiled_case.name}: graphs compiled per training step {run.graphs_per_step}: every graph after "
        "step 1 is a recompile (run with TORCH_LOGS=recompiles to see which guard failed)"
    )
    assert compiled_case.comparison.graphs_compiled == 0, (
        f"{compiled_case.name}: the comparison step after {len(run.graphs_per_step)} training steps "
        f"compiled {compiled_case.comparison.graphs_compiled} new graph(s)"
    )


def test_tie_holds_after_compiled_training(compiled_case: CompiledCase) -> None:
    module = compiled_case.module
    assert is_tied(module), (
        f"{compiled_case.name}: after compiled training lm_head.weight is no longer transformer.wte.weight; "
        "something replaced one of the two Parameters (an optimizer, a state-dict load, or the compile)"
    )
