"""Target assignment: the Hungarian matcher and its costs."""
from .hungarian_assigner import HungarianAssigner
from .match_costs import BBoxL1Cost, FocalLossCost, GIoUCost, MatchCost

__all__ = ['HungarianAssigner', 'MatchCost', 'FocalLossCost', 'BBoxL1Cost', 'GIoUCost']
