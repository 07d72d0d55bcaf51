"""napari-wbc: white blood cell segmentation, review and measurement in napari."""

__version__ = "0.1.0"
