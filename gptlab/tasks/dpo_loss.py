"""Direct Preference Optimization (Rafailov et al., 2023; the book's chapter 7 bonus notebook).

DPO raises the policy's log-probability of the chosen response relative to the rejected one,
measured against a fixed reference model, with the loss

    -log sigmoid(beta * ((pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)))

where each term is a response's log-probability under the policy (``pi``) or the reference
(``ref``). Its implicit rewards ``beta * (pi - ref)`` are what TRL logs as ``rewards/*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gptlab.errors import ConfigError

#: How a response's token log-probabilities become one number: the paper and TRL sum them, the
#: book's notebook averages them per response token.
LOGP_REDUCTIONS = ("sum", "mean")


def response_logps(logits: torch.Tensor, input_ids: torch.Tensor,
                   response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each row's response tokens, and how many there are.

    Args:
        logits: ``(B, T, V)`` next-token logits of ``input_ids``.
        input_ids: ``(B, T)`` prompt, response and right padding.
        response_mask: ``(B, T)`` true at response tokens; token ``t`` is scored by the logits at
            ``t - 1``, so the first token (always part of the prompt) is never scored.

    Only the scored positions go through the softmax, so padding and prompts cost no memory.
    """
    targets, mask = input_ids[:, 1:], response_mask[:, 1:].bool()
    token_logps = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    scored = logits[:, :-1][mask].float()
    token_logps[mask] = -F.cross_entropy(scored, targets[mask], reduction="none")
    return token_logps.sum(dim=-1), mask.sum(dim=-1)


def reduce_logps(sums: torch.Tensor, counts: torch.Tensor, reduction: str) -> torch.Tensor:
    """``sum``: the response's log-probability; ``mean``: per response token."""
    if reduction == "sum":
        return sums
    if reduction == "mean":
        return sums / counts.clamp(min=1).to(sums.dtype)
    raise ConfigError(f"task.logp_reduction={reduction!r} is unknown; use one of {', '.join(LOGP_REDUCTIONS)}")


@dataclass
class DPOOutput:
    """Per-example DPO loss and its diagnostics (rewards are detached)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return self.losses.mean()

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        """1 where the chosen response earns the larger reward, else 0."""
        return (self.chosen_rewards > self.rejected_rewards).float()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> DPOOutput:
    """The DPO loss of each pair from the four ``(B,)`` response log-probabilities.

    When the policy equals the reference, every loss is ``log 2`` and every reward 0.
    """
    policy_chosen, policy_rejected = policy_chosen.float(), policy_rejected.float()
    reference_chosen, reference_rejected = reference_chosen.float(), reference_rejected.float()
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    return DPOOutput(
        losses=-F.logsigmoid(beta * logits),
        chosen_rewards=(beta * (policy_chosen - reference_chosen)).detach(),
        rejected_rewards=(beta * (policy_rejected - reference_rejected)).detach(),
    )


def pair_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``(chosen_sums, rejected_sums, chosen_counts, rejected_counts)`` of a preference batch.

    Chosen and rejected sequences (padded to one length by the collator) are stacked along the
    batch and go through ``model`` in one forward pass: half the kernel launches, and under DDP
    one forward per step, as its gradient hooks expect.
    """
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    mask = torch.cat([batch["chosen_response_mask"], batch["rejected_response_mask"]])
    sums, counts = response_logps(model(ids), ids, mask)
    n = batch["chosen_input_ids"].shape[0]
    return sums[:n], sums[n:], counts[:n], counts[n:]
