"""The fixed names of a dataset folder, shared by its writer (geo/dataset.py) and its readers (ml/data.py,
the DataStore's output catalog) without importing the build code: the manifest file and the splits."""

MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val", "test")
