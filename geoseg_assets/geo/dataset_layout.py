"""The fixed names of a dataset folder, shared by its writers (geo/dataset.py, geo/manifest.py) and its
readers (ml/shard_dataset.py, the DataStore's output catalog) without importing the build code: the
manifest file and the splits."""

MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val", "test")
