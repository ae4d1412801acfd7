"""`distill.compile`: the student's transformer under torch.compile (dynamic shapes) gives the losses and
gradients of the eager student, on plain and packed micro-batches of new shapes (inductor runs a C++
compiler in processes: the slow layer)."""

import copy

import pytest
import torch

from adpa.stages.common.lm import base_model
from test_objective import make_pairs, ours, tiny_model

pytestmark = pytest.mark.slow


def test_a_compiled_student_gives_the_eager_losses_and_gradients():
    eager = tiny_model(9)
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    base_model(compiled).compile(dynamic=True)  # what Distiller.setup does with distill.compile
    for seed, n, loss, packed in ((15, 8, "dckd", True), (22, 5, "adpa", True), (3, 6, "dpo", False)):
        pairs, _ = make_pairs(seed, n_pairs=n)  # each set its own shapes
        for m in (eager, compiled):
            m.zero_grad(set_to_none=True)
        va, vb = ours(eager, pairs, loss, packed=packed), ours(compiled, pairs, loss, packed=packed)
        assert vb == pytest.approx(va, rel=1e-5), (loss, packed)
        for (name, pa), pb in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=f"{loss} {name}")
    assert base_model(compiled)._compiled_call_impl is not None  # what nn.Module.compile sets: it did compile
