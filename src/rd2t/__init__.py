"""rd2t: reverse knowledge distillation with two teachers for industrial defect detection."""

__version__ = "0.1.0"
