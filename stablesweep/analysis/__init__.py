"""Analysis on plain tables of trials (no Ray, no MLflow): the stable region and its figures."""
from stablesweep.analysis.region import Group, Region, analyze, lr_sensitivity, write_region

__all__ = ["Group", "Region", "analyze", "lr_sensitivity", "write_region"]
