"""napari widgets: the only part of napari-wbc that imports napari.qt, qtpy or magicgui."""
