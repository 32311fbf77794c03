"""Detection head of Deformable DETR: per-decoder-layer class and box predictions relative
to the reference points (A.3), the Hungarian loss with auxiliary and encoder terms, and
the top-k post-processing."""
import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor, nn

from ddetr.errors import ConfigError
from ddetr.registry import MODELS, TASK_UTILS

from ..layers import MLP
from ..utils import average_across_processes, box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, offset_boxes

# Classification bias for a prior probability of 0.01 per class (focal loss init).
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


@MODELS.register_module()
class DeformableDETRHead(BaseModule):
    """Class and box branches for every decoder layer (and, two-stage, the encoder).

    Boxes are predicted relative to the reference of the layer (A.3):
    b = sigma(delta + sigma^-1(r)) for a 4-d reference box r (refinement, two-stage), and
    b = (sigma(delta_xy + sigma^-1(p)), sigma(delta_wh)) for a 2-d reference point p.

    ``share_pred_layer``, ``num_pred_layer`` and ``as_two_stage`` are written by the
    detector (from its ``with_box_refine`` and ``as_two_stage``): without refinement one
    class and one box branch are shared by every layer, with refinement each layer has its
    own (A.4); two-stage adds one more pair, the last, for the encoder's proposals.

    Args:
        num_classes (int): classes (80 for mmdet's COCO, 91 for the original release's
            category-id space).
        embed_dims (int): C.
        num_reg_fcs (int): hidden layers of the box MLP (2: a 3-layer FFN).
        share_pred_layer (bool): one set of branches for all layers.
        num_pred_layer (int): number of (class, box) branch pairs.
        as_two_stage (bool): the last pair scores and regresses encoder proposals.
        loss_cls, loss_bbox, loss_iou (dict): loss configs (focal x2, L1 x5, GIoU x2).
        train_cfg (dict): ``assigner`` config (HungarianAssigner with the same weights).
        test_cfg (dict): ``max_per_img`` (100).
    """

    def __init__(self, *, num_classes: int, embed_dims: int = 256, num_reg_fcs: int = 2,
                 share_pred_layer: bool = False, num_pred_layer: int = 6,
                 as_two_stage: bool = False,
                 loss_cls: Optional[dict] = None, loss_bbox: Optional[dict] = None,
                 loss_iou: Optional[dict] = None, train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_classes < 1:
            raise ConfigError(f'DeformableDETRHead: num_classes must be >= 1, got {num_classes}')
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.share_pred_layer = share_pred_layer
        self.num_pred_layer = num_pred_layer
        self.as_two_stage = as_two_stage
        self.loss_cls = MODELS.build(loss_cls or dict(type='SigmoidFocalLoss', alpha=0.25,
                                                       gamma=2.0, loss_weight=2.0))
        self.loss_bbox = MODELS.build(loss_bbox or dict(type='L1Loss', loss_weight=5.0))
        self.loss_iou = MODELS.build(loss_iou or dict(type='GIoULoss', loss_weight=2.0))
        train_cfg = dict(train_cfg or {})
        self.assigner = TASK_UTILS.build(train_cfg.get('assigner') or dict(
            type='HungarianAssigner',
            match_costs=[dict(type='FocalLossCost', weight=2.0),
                         dict(type='BBoxL1Cost', weight=5.0),
                         dict(type='GIoUCost', weight=2.0)]))
        self.test_cfg = {**dict(max_per_img=100), **(test_cfg or {})}

        cls_branch = nn.Linear(embed_dims, num_classes)
        reg_branch = MLP(embed_dims, embed_dims, 4, num_reg_fcs + 1)
        if share_pred_layer:
            self.cls_branches = nn.ModuleList([cls_branch] * num_pred_layer)
            self.reg_branches = nn.ModuleList([reg_branch] * num_pred_layer)
        else:
            # copies of one branch, as the original release clones its heads
            self.cls_branches = nn.ModuleList(
                copy.deepcopy(cls_branch) for _ in range(num_pred_layer))
            self.reg_branches = nn.ModuleList(
                copy.deepcopy(reg_branch) for _ in range(num_pred_layer))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Class biases -log((1 - 0.01) / 0.01) (prior probability 0.01 for the focal loss);
        the last box layer zero, except the (w, h) bias of the first layer's branch = -2
        (sigma(-2) = 0.12, close to A.4's initial 0.1); two-stage sets that bias to 0 on
        every branch, since its boxes start from the proposals' sizes."""
        for branch in self.cls_branches:
            nn.init.constant_(branch.bias, PRIOR_BIAS)
        for branch in self.reg_branches:
            nn.init.zeros_(branch.layers[-1].weight)
            nn.init.zeros_(branch.layers[-1].bias)
        nn.init.constant_(self.reg_branches[0].layers[-1].bias[2:], -2.0)
        if self.as_two_stage:
            for branch in self.reg_branches:
                nn.init.zeros_(branch.layers[-1].bias[2:])

    @torch.no_grad()
    def init_cls_branch(self, branch: nn.Linear) -> None:
        """A classification layer as new (fine-tuning to other classes): nn.Linear's
        initial weight and the prior-probability bias."""
        branch.reset_parameters()
        nn.init.constant_(branch.bias, PRIOR_BIAS)

    def init_weights(self) -> None:
        if self.init_cfg:
            super().init_weights()
        else:
            self.reset_parameters()

    # ------------------------------------------------------------------ forward
    def forward(self, hidden_states: Tensor, references: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """
        Args:
            hidden_states: (num_layers, bs, num_queries, C) outputs of every decoder layer.
            references: num_layers tensors, the reference each layer used:
                (bs, num_queries, 2) points or (bs, num_queries, 4) boxes, normalized.

        Returns:
            all_cls_scores: (num_layers, bs, num_queries, num_classes) logits.
            all_bbox_preds: (num_layers, bs, num_queries, 4) normalized (cx, cy, w, h).
        """
        if len(references) != len(hidden_states):
            raise ValueError(f'DeformableDETRHead: {len(hidden_states)} decoder layers but '
                             f'{len(references)} references')
        mlvl_cls, mlvl_boxes = [], []
        for layer_id, (hidden_state, reference) in enumerate(zip(hidden_states, references)):
            delta = self.reg_branches[layer_id](hidden_state)  # (bs, nq, 4)
            mlvl_boxes.append(offset_boxes(delta, reference))  # A.3 / A.4
            mlvl_cls.append(self.cls_branches[layer_id](hidden_state))
        return torch.stack(mlvl_cls), torch.stack(mlvl_boxes)

    # --------------------------------------------------------------------- loss
    def loss(self, hidden_states: Tensor, references: Sequence[Tensor], batch_data_samples,
             enc_outputs_class: Optional[Tensor] = None,
             enc_outputs_coord: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Losses from the decoder outputs and the DetDataSamples' ``gt_instances``."""
        all_cls_scores, all_bbox_preds = self(hidden_states, references)
        batch_gt_instances = [sample.gt_instances for sample in batch_data_samples]
        batch_img_metas = [sample.metainfo for sample in batch_data_samples]
        return self.loss_by_feat(all_cls_scores, all_bbox_preds, batch_gt_instances,
                                 batch_img_metas, enc_outputs_class, enc_outputs_coord)

    def loss_by_feat(self, all_cls_scores: Tensor, all_bbox_preds: Tensor,
                     batch_gt_instances: Sequence[InstanceData], batch_img_metas: Sequence[dict],
                     enc_cls_scores: Optional[Tensor] = None,
                     enc_bbox_preds: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """The Hungarian loss of every decoder layer (the last as ``loss_*``, the others as
        ``d{i}.loss_*``) and, two-stage, of the encoder proposals (``enc_loss_*``), whose
        targets are the same boxes with every label 0 (class-agnostic "object").

        Ground truth: ``bboxes`` (x1, y1, x2, y2) in pixels of the network input and
        ``labels``; boxes are normalized by the image's unpadded ``img_shape``. All terms
        are divided by the number of boxes, averaged over processes and at least 1.
        """
        gt_labels, gt_boxes = self._normalized_targets(batch_gt_instances, batch_img_metas,
                                                       all_bbox_preds)
        num_boxes = sum(len(labels) for labels in gt_labels)
        num_boxes = max(average_across_processes(num_boxes, all_bbox_preds.device), 1.0)

        losses = {}
        num_layers = len(all_cls_scores)
        for layer_id in range(num_layers):
            loss_cls, loss_bbox, loss_iou = self.loss_single(
                all_cls_scores[layer_id], all_bbox_preds[layer_id], gt_labels, gt_boxes,
                num_boxes)
            prefix = '' if layer_id == num_layers - 1 else f'd{layer_id}.'
            losses[f'{prefix}loss_cls'] = loss_cls
            losses[f'{prefix}loss_bbox'] = loss_bbox
            losses[f'{prefix}loss_iou'] = loss_iou
        if enc_cls_scores is not None:
            agnostic = [torch.zeros_like(labels) for labels in gt_labels]
            loss_cls, loss_bbox, loss_iou = self.loss_single(
                enc_cls_scores, enc_bbox_preds, agnostic, gt_boxes, num_boxes)
            losses['enc_loss_cls'] = loss_cls
            losses['enc_loss_bbox'] = loss_bbox
            losses['enc_loss_iou'] = loss_iou
        return losses

    def loss_single(self, cls_scores: Tensor, bbox_preds: Tensor, gt_labels: List[Tensor],
                    gt_boxes: List[Tensor], num_boxes: float) -> Tuple[Tensor, Tensor, Tensor]:
        """Losses of one set of predictions: cls_scores (bs, nq, num_classes), bbox_preds
        (bs, nq, 4) normalized (cx, cy, w, h); per image gt labels and normalized boxes."""
        # losses and matching in float32, also under mixed precision
        cls_scores, bbox_preds = cls_scores.float(), bbox_preds.float()
        bs, num_queries = cls_scores.shape[:2]
        matches = self.assigner.assign_batch(cls_scores, bbox_preds, gt_labels, gt_boxes)
        # "no object" (= num_classes) for unmatched queries
        labels = cls_scores.new_full((bs, num_queries), self.num_classes, dtype=torch.int64)
        matched_preds, matched_targets = [], []
        for img_id, (query_inds, gt_inds) in enumerate(matches):
            labels[img_id, query_inds] = gt_labels[img_id][gt_inds]
            matched_preds.append(bbox_preds[img_id, query_inds])
            matched_targets.append(gt_boxes[img_id][gt_inds])
        matched_preds = torch.cat(matched_preds)  # (num_matched, 4)
        matched_targets = torch.cat(matched_targets).to(matched_preds.dtype)  # (num_matched, 4)

        loss_cls = self.loss_cls(cls_scores.flatten(0, 1), labels.flatten(), num_boxes)
        loss_bbox = self.loss_bbox(matched_preds, matched_targets, num_boxes)
        loss_iou = self.loss_iou(box_cxcywh_to_xyxy(matched_preds),
                                 box_cxcywh_to_xyxy(matched_targets), num_boxes)
        return loss_cls, loss_bbox, loss_iou

    def _normalized_targets(self, batch_gt_instances, batch_img_metas,
                            like: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """Per image: labels (ng,) and boxes (ng, 4) in (cx, cy, w, h) / image size."""
        gt_labels, gt_boxes = [], []
        for gt, meta in zip(batch_gt_instances, batch_img_metas):
            boxes = gt.bboxes
            boxes = getattr(boxes, 'tensor', boxes)  # mmdet's HorizontalBoxes or a tensor
            labels = gt.labels.to(like.device).long()
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ConfigError(f'DeformableDETRHead: ground-truth labels must be in '
                                  f'[0, {self.num_classes}), got {labels.tolist()}')
            img_h, img_w = meta['img_shape'][:2]
            factor = boxes.new_tensor([img_w, img_h, img_w, img_h])
            gt_boxes.append(box_xyxy_to_cxcywh(boxes.to(like.device) / factor.to(like.device)))
            gt_labels.append(labels)
        return gt_labels, gt_boxes

    # ------------------------------------------------------------------ predict
    def predict(self, hidden_states: Tensor, references: Sequence[Tensor], batch_data_samples,
                rescale: bool = True) -> List[InstanceData]:
        """Detections of every image (see ``predict_by_feat``)."""
        all_cls_scores, all_bbox_preds = self(hidden_states, references)
        batch_img_metas = [sample.metainfo for sample in batch_data_samples]
        return self.predict_by_feat(all_cls_scores, all_bbox_preds, batch_img_metas, rescale)

    def predict_by_feat(self, all_cls_scores: Tensor, all_bbox_preds: Tensor,
                        batch_img_metas: Sequence[dict],
                        rescale: bool = True) -> List[InstanceData]:
        """Post-processing of the last decoder layer, without NMS: sigmoid scores, the top
        ``max_per_img`` (100) of all (query, class) pairs (a query may appear with several
        classes), boxes to (x1, y1, x2, y2) pixels of the network input clipped to the
        image, then, with ``rescale``, divided by ``scale_factor`` (original image; without a
        ``scale_factor`` in the meta, i.e. no Resize in the pipeline, the factor is 1).

        Returns InstanceData with ``bboxes`` (n, 4), ``scores`` (n,), ``labels`` (n,)."""
        # float32 boxes also under mixed precision (bfloat16 would be off by pixels)
        cls_scores, bbox_preds = all_cls_scores[-1].float(), all_bbox_preds[-1].float()
        num_queries, num_classes = cls_scores.shape[1:]
        max_per_img = min(self.test_cfg['max_per_img'], num_queries * num_classes)
        results = []
        for img_id, meta in enumerate(batch_img_metas):
            # (nq, num_classes) -> (nq * num_classes,): query-major
            scores, indices = cls_scores[img_id].sigmoid().flatten().topk(max_per_img)
            labels = indices % num_classes
            boxes = box_cxcywh_to_xyxy(bbox_preds[img_id, indices // num_classes])
            img_h, img_w = meta['img_shape'][:2]
            boxes = boxes * boxes.new_tensor([img_w, img_h, img_w, img_h])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=img_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=img_h)
            # no scale_factor: the pipeline had no Resize, the input is the original image
            if rescale and meta.get('scale_factor') is not None:
                scale_w, scale_h = meta['scale_factor'][:2]
                boxes = boxes / boxes.new_tensor([scale_w, scale_h, scale_w, scale_h])
            results.append(InstanceData(bboxes=boxes, scores=scores, labels=labels))
        return results
