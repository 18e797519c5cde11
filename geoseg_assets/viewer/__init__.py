"""The geoseg viewer (`app.py`): a map of each partition's scene, mask and prediction, and its reports."""
