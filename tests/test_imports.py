import subprocess
import sys

CODE = """
import sys
import napari_wbc
assert "torch" not in sys.modules, "import napari_wbc must stay cheap"
import napari_wbc.cli, napari_wbc.core.batch, napari_wbc.core.inference, napari_wbc.core.train
import napari_wbc.core.evaluate, napari_wbc.core.review, napari_wbc.core.edit, napari_wbc.core.compare
import napari_wbc.models
napari_wbc.models.load_model()
gui = sorted(m for m in ("napari", "qtpy", "PyQt6", "magicgui") if m in sys.modules)
assert not gui, gui
"""


def test_core_and_models_import_without_qt():
    subprocess.run([sys.executable, "-c", CODE], check=True)
