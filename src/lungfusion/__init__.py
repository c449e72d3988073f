"""lungfusion: PET/CT + clinical fusion pipeline for lung cancer."""

__version__ = "0.1.0"
