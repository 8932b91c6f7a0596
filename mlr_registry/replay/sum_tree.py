"""A sum tree over replay priorities, in torch, vectorized over batches (rlpyt's SumTree).

Leaf ``i`` holds the priority of replay entry ``i``; every inner node holds the sum of its two
children, so the root is the total priority and a prefix-sum search finds, for a mass ``m`` in
``[0, total)``, the leaf whose cumulative interval contains ``m``: sampling a leaf with
probability proportional to its priority costs one pass over the tree depth.

Layout: a 0-indexed binary heap of ``2·L − 1`` nodes, ``L = 2^depth >= capacity`` leaves,
node ``j`` has children ``2j+1`` and ``2j+2``, leaf ``i`` is node ``L − 1 + i``. Values are
float64, as in rlpyt, whose docstring notes that float32 sometimes returned zero-priority
leaves because of cancellation in the descent.

Every operation is a loop over the ``depth`` levels only, vectorized over the batch; data stays
on the tree's device.
"""

from __future__ import annotations

import math

import torch

from mlr_registry.errors import check_range


def _first_copy(keys: torch.Tensor) -> torch.Tensor:
    """For each position of ``keys`` (n,), the position of the first entry with the same key.

    A stable sort groups equal keys in their original order; each group's first sorted slot is
    its first copy. O(n log n), no Python loop, fixed shapes (compiles).
    """
    order = torch.sort(keys, stable=True).indices  # (n)
    ranked = keys[order]
    starts = torch.ones_like(ranked, dtype=torch.bool)
    starts[1:] = ranked[1:] != ranked[:-1]
    slots = torch.arange(keys.numel(), device=keys.device)
    group_start = torch.where(starts, slots, 0).cummax(0).values  # (n) sorted slot of the group's head
    first = torch.empty_like(order)
    first[order] = order[group_start]
    return first


class SumTree:
    """Priorities of ``capacity`` entries with batched update and batched prefix-sum search."""

    def __init__(self, capacity: int, device: str | torch.device = "cpu") -> None:
        """
        Args:
            capacity: number of leaves (replay entries); all start at priority 0.
            device: where the tree lives (the replay's device, so sampling needs no transfer).
        """
        check_range("capacity", capacity, 1, integer=True)
        self.capacity = int(capacity)
        self.depth = max(0, math.ceil(math.log2(self.capacity)))
        self.num_leaves = 2**self.depth  # L
        self.device = torch.device(device)
        self.tree = torch.zeros(2 * self.num_leaves - 1, dtype=torch.float64, device=self.device)

    @property
    def leaves(self) -> torch.Tensor:
        """(capacity,) float64 view of the leaf priorities (read it, write via :meth:`update`)."""
        first = self.num_leaves - 1
        return self.tree[first:first + self.capacity]

    @property
    def total(self) -> torch.Tensor:
        """0-d float64 tensor: the sum of all priorities (the root)."""
        return self.tree[0]

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """Leaf priorities at ``indices`` (any shape, int64) -> float64 of the same shape."""
        return self.tree[indices + (self.num_leaves - 1)]

    def update(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Set leaves ``indices`` (n,) to ``values`` (n,), then recompute their ancestors.

        A leaf listed more than once keeps the value of its first copy, as rlpyt's priority
        write-back (``np.unique(..., return_index=True)``). Parents are recomputed as the sum
        of their children (not incremented by differences), so every ancestor is the exact sum
        below it.
        """
        nodes = indices.reshape(-1).to(self.device, torch.int64) + (self.num_leaves - 1)
        values = values.reshape(-1).to(self.device, torch.float64)
        self.tree[nodes] = values[_first_copy(nodes)]  # every copy writes the same value
        for _ in range(self.depth):  # one level up per iteration, the whole batch at once
            nodes = (nodes - 1) // 2
            self.tree[nodes] = self.tree[2 * nodes + 1] + self.tree[2 * nodes + 2]

    def set_leaves(self, values: torch.Tensor) -> None:
        """Replace all ``capacity`` leaf priorities and rebuild every level (e.g. on load)."""
        self.tree.zero_()
        self.leaves.copy_(values.reshape(-1))
        for level in range(self.depth - 1, -1, -1):  # level k holds nodes 2^k - 1 .. 2^(k+1) - 2
            lo, hi = 2**level - 1, 2 ** (level + 1) - 1
            self.tree[lo:hi] = self.tree[2 * lo + 1:2 * hi + 1].view(-1, 2).sum(-1)

    def find(self, mass: torch.Tensor) -> torch.Tensor:
        """Leaf indices (n,) int64 whose cumulative-priority interval contains ``mass`` (n,).

        ``mass`` is in ``[0, total)``. The descent goes right when the mass exceeds the left
        sum (as rlpyt), but never into a zero-sum subtree, so a positive-priority leaf is
        returned whatever the rounding, provided the total is positive.
        """
        mass = mass.to(self.device, torch.float64).clone()
        nodes = torch.zeros_like(mass, dtype=torch.int64)
        for _ in range(self.depth):
            left = 2 * nodes + 1
            left_sum, right_sum = self.tree[left], self.tree[left + 1]
            go_right = (right_sum > 0) & ((mass > left_sum) | (left_sum <= 0))
            mass = torch.where(go_right, mass - left_sum, mass)
            nodes = left + go_right.long()
        return nodes - (self.num_leaves - 1)

    def sample(self, n: int, generator: torch.Generator | None = None,
               stratified: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` leaves drawn with replacement, P(i) = priority_i / total.

        Returns ``(indices (n,) int64, priorities (n,) float64)``. With ``stratified`` the
        total is cut into ``n`` equal segments and one uniform draw is taken in each (lower
        variance, not independent); otherwise the ``n`` draws are i.i.d. uniform over the
        total, which is what rlpyt's ``SumTree.sample`` does (``np.random.rand(n)``).
        """
        indices = self.find(self.masses(n, generator, stratified))
        return indices, self.get(indices)

    def masses(self, n: int, generator: torch.Generator | None = None, stratified: bool = False) -> torch.Tensor:
        """The ``n`` cumulative-priority draws of :meth:`sample` (n,) float64 in ``[0, total)``."""
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=self.device)
        if stratified:
            u = (torch.arange(n, dtype=torch.float64, device=self.device) + u) / n
        return u * self.total
