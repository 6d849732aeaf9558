"""The mean teacher: an exponential moving average of every parameter and floating
buffer of the multi-task model, shared by all tasks (SMART's momentum Bregman anchor).

Must not import config, data, train or cli.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class MeanTeacher:
    """A true deep copy of the model, in eval mode, never part of an autograd graph.

    ``update`` sets θ̃ ← β·θ̃ + (1 − β)·θ for parameters and floating buffers; integer
    buffers (BERT's ``position_ids``) are copied, never averaged."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model)
        self.model.eval()
        self.model.requires_grad_(False)
        self.num_updates = 0

    def _pairs(self, student: nn.Module):
        teacher_state = dict(self.model.named_parameters())
        teacher_state.update(self.model.named_buffers())
        student_state = dict(student.named_parameters())
        student_state.update(student.named_buffers())
        if teacher_state.keys() != student_state.keys():
            missing = sorted(set(student_state) ^ set(teacher_state))[:3]
            raise ValueError(f"teacher and student differ in parameters: {missing}")
        return [(teacher_state[k], student_state[k]) for k in teacher_state]

    @torch.no_grad()
    def update(self, student: nn.Module, beta: float) -> None:
        floats_t, floats_s = [], []
        for t, s in self._pairs(student):
            if t.is_floating_point():
                floats_t.append(t)
                floats_s.append(s.detach())
            else:
                t.copy_(s)
        # lerp(t, s, 1 − β) = t + (1 − β)(s − t) = β·t + (1 − β)·s, fused over all tensors.
        torch._foreach_lerp_(floats_t, floats_s, 1.0 - beta)
        self.num_updates += 1

    def forward(self, task: str, **kwargs) -> torch.Tensor:
        """The teacher's outputs with no graph and no dropout (eval mode). Inference mode
        (SMART.md) also skips autograd's version counting; the outputs may still enter the
        student's graph as constants, since nothing saves them for backward."""
        with torch.inference_mode():
            return self.model(task, **kwargs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
