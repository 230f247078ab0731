"""What is ours: the guarded loss, the divergence monitor and its verdicts, precision policies."""
from stablesweep.stability.loss import VALUE_MASKS, GuardedLoss, LossOutput, mask_value
from stablesweep.stability.monitor import DivergenceMonitor, Verdict
from stablesweep.stability.precision import Precision, make_precision

__all__ = ["VALUE_MASKS", "GuardedLoss", "LossOutput", "mask_value", "DivergenceMonitor", "Verdict", "Precision",
           "make_precision"]
