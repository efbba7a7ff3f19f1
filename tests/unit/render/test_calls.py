"""What a pipeline call runs under: torch's global generator pinned to the batch, so pipelines that draw from it
(SD3's ControlNet pipeline samples its control latents so) render the same image twice, and put back after."""

import torch

from sdbatch.render.calls import pinned_global_rng


class _Batch:
    def __init__(self, seed: int):
        self.rows = [{"seed": seed}]


def test_a_call_draws_the_same_numbers_from_the_global_generator_each_time_and_leaves_it_as_it_was():
    torch.manual_seed(123)
    expected_after = torch.rand(3)
    torch.manual_seed(123)
    drawn = []
    for _ in range(2):
        with pinned_global_rng(_Batch(7)):
            drawn.append(torch.rand(4))
    assert torch.equal(drawn[0], drawn[1])
    with pinned_global_rng(_Batch(8)):
        assert not torch.equal(torch.rand(4), drawn[0])  # another batch's first row, other numbers
    assert torch.equal(torch.rand(3), expected_after)  # the caller's stream is untouched
