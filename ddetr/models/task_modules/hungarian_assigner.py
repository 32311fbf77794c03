"""One-to-one matching of predictions to ground truth (the Hungarian loss of DETR)."""
from typing import List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ddetr.errors import ConfigError
from ddetr.registry import TASK_UTILS

from .match_costs import build_match_cost


@TASK_UTILS.register_module()
class HungarianAssigner:
    """Minimum-cost bipartite matching of each image's queries to its objects, with the
    cost the weighted sum of ``match_costs`` (focal class cost x2, L1 x5, GIoU x2) solved
    by scipy's ``linear_sum_assignment``. Every object gets exactly one query (there are
    more queries than objects); the other queries are "no object". Runs without gradient.

    ``assign`` matches one image; ``assign_batch`` computes one cost matrix for the whole
    batch (all queries against all objects, as DETR's matcher does) and solves each
    image's block. Both give the same matching.

    Args:
        match_costs (list[dict | MatchCost]): the costs.
    """

    def __init__(self, *, match_costs: Sequence) -> None:
        if not match_costs:
            raise ConfigError('HungarianAssigner needs at least one match cost')
        self.match_costs = [build_match_cost(cfg) for cfg in match_costs]

    def _cost_matrix(self, pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Tensor,
                     gt_boxes: Tensor) -> Tensor:
        costs = [cost(pred_logits=pred_logits, pred_boxes=pred_boxes, gt_labels=gt_labels,
                      gt_boxes=gt_boxes) for cost in self.match_costs]
        return torch.stack(costs).sum(0)

    @staticmethod
    def _solve(cost: Tensor, device: torch.device) -> Tuple[Tensor, Tensor]:
        # Non-finite costs come from non-finite predictions (diverged weights). They become
        # the worst finite cost so the matching stays defined; the losses of those
        # predictions are non-finite themselves, and training stops there with the
        # iteration and the loss terms (scipy would only say "invalid numeric entries").
        cost = torch.nan_to_num(cost.double(), nan=1e10, posinf=1e10, neginf=-1e10)
        query_inds, gt_inds = linear_sum_assignment(cost.cpu().numpy())
        return (torch.as_tensor(query_inds, dtype=torch.int64, device=device),
                torch.as_tensor(gt_inds, dtype=torch.int64, device=device))

    @torch.no_grad()
    def assign(self, pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Tensor,
               gt_boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """Match one image.

        Args:
            pred_logits: (num_queries, num_classes) classification logits.
            pred_boxes: (num_queries, 4) normalized (cx, cy, w, h).
            gt_labels: (num_gts,) int64.
            gt_boxes: (num_gts, 4) normalized (cx, cy, w, h).

        Returns:
            query_inds, gt_inds: (min(num_queries, num_gts),) int64 each, the matched pairs
            sorted by query index. Empty when the image has no objects.
        """
        device = pred_logits.device
        if len(gt_labels) == 0 or len(pred_logits) == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            return empty, empty.clone()
        cost = self._cost_matrix(pred_logits, pred_boxes, gt_labels, gt_boxes)
        return self._solve(cost, device)

    @torch.no_grad()
    def assign_batch(self, pred_logits: Tensor, pred_boxes: Tensor,
                     batch_gt_labels: Sequence[Tensor],
                     batch_gt_boxes: Sequence[Tensor]) -> List[Tuple[Tensor, Tensor]]:
        """Match a batch: pred_logits (bs, num_queries, num_classes), pred_boxes
        (bs, num_queries, 4), and per image gt labels (num_gts_i,) and boxes (num_gts_i, 4).
        Returns one (query_inds, gt_inds) pair per image, as ``assign``."""
        bs, num_queries = pred_logits.shape[:2]
        if len(batch_gt_labels) != bs or len(batch_gt_boxes) != bs:
            raise ValueError(f'HungarianAssigner.assign_batch: {bs} images of predictions but '
                             f'{len(batch_gt_labels)} label and {len(batch_gt_boxes)} box lists')
        device = pred_logits.device
        sizes = [len(labels) for labels in batch_gt_labels]
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        if sum(sizes) == 0 or num_queries == 0:
            return [(empty, empty.clone()) for _ in range(bs)]
        # (bs * nq, total_gts): every query against every object of the batch
        cost = self._cost_matrix(pred_logits.flatten(0, 1), pred_boxes.flatten(0, 1),
                                 torch.cat(list(batch_gt_labels)), torch.cat(list(batch_gt_boxes)))
        cost = cost.view(bs, num_queries, -1)
        results = []
        for img_id, block in enumerate(cost.split(sizes, dim=-1)):
            if sizes[img_id] == 0:
                results.append((empty, empty.clone()))
            else:
                results.append(self._solve(block[img_id], device))
        return results

    def __repr__(self) -> str:
        return f'HungarianAssigner(match_costs={self.match_costs})'
