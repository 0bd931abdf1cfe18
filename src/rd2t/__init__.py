"""rd2t: reverse knowledge distillation with two teachers for industrial defect detection."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import rd2t` stays light; `rd2t.Detector` pulls in torch only when used.
    if name == "Detector":
        from rd2t.api import Detector

        return Detector
    raise AttributeError(name)
