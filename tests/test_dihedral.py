"""Flips/rotations of a batch and averaging a network over some of them (pure, no servers)."""

from __future__ import annotations

import pytest
import torch

from shared.ml.dihedral import VIEWS, averaged_over_views, unview, view


def _asymmetric() -> torch.Tensor:
    return torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)


def test_the_eight_views_are_distinct_and_each_turns_back() -> None:
    x = _asymmetric()
    views = [view(x, turns, flip) for turns, flip in VIEWS]
    assert VIEWS[0] == (0, False)  # the identity comes first: one view is the plain pass
    assert len(set(VIEWS)) == 8
    assert len({(tuple(v.shape), tuple(v.flatten().tolist())) for v in views}) == 8
    for (turns, flip), turned in zip(VIEWS, views, strict=True):
        assert torch.equal(unview(turned, turns, flip), x)
    assert views[1].shape == (2, 3, 6, 4)  # a quarter turn swaps the sides
    for (turns, flip), turned in zip(VIEWS, views, strict=True):  # torch's own turn, then flip
        by_torch = torch.rot90(x, turns, dims=(2, 3))
        assert torch.equal(turned, by_torch.flip(3) if flip else by_torch)


def test_a_pointwise_network_is_left_unchanged_by_any_number_of_views() -> None:
    x, guide = torch.rand(1, 1, 8, 16), torch.rand(1, 3, 8, 16)

    def pointwise(plane: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return plane * 2 + g.sum(1, keepdim=True)

    for views in (1, 2, 4, 8):
        torch.testing.assert_close(averaged_over_views(pointwise, (x, guide), views),
                                   pointwise(x, guide))


def test_views_average_what_the_network_sees_in_each_frame() -> None:
    # A network that is not equivariant: it adds a ramp along the width it is given.
    x = torch.zeros(1, 1, 8, 16)

    def ramp(batch: torch.Tensor) -> torch.Tensor:
        width = batch.shape[3]
        return batch + torch.arange(width, dtype=torch.float32).expand_as(batch)

    two = averaged_over_views(ramp, (x,), 2)
    along_width = torch.arange(16, dtype=torch.float32).expand(1, 1, 8, 16)
    along_height = torch.rot90(torch.arange(8, dtype=torch.float32).expand(1, 1, 16, 8), -1,
                               dims=(2, 3))
    torch.testing.assert_close(two, (along_width + along_height) / 2)
    torch.testing.assert_close(averaged_over_views(ramp, (x,), 1), along_width)


@pytest.mark.parametrize("views", [0, 9])
def test_a_view_count_outside_the_group_is_refused(views: int) -> None:
    with pytest.raises(ValueError, match=r"views must be 1\.\.8"):
        averaged_over_views(lambda x: x, (torch.zeros(1, 1, 8, 8),), views)
