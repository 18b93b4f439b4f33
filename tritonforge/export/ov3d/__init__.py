"""The `ov3d` family (in progress): open-vocabulary 3-D detection in point clouds (OV-3DETIC).

So far: procedural rooms with exact boxes (`scenes.py`) and the numpy farthest-point sampling
and ball query the detector's graph will take as inputs (`sampling.py`).
"""
