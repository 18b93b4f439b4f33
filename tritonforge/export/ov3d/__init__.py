"""The `ov3d` family (in progress): open-vocabulary 3-D detection in point clouds (OV-3DETIC).

Built so far, not yet a registered family:
- `scenes.py`: procedural rooms (furniture from primitives, sensor occlusion) with exact boxes
  and a seen/unseen class split; `points.py`: .ply/.pcd/.npy bytes to checked points;
- `sampling.py` and `data.py`: the numpy farthest-point sampling and ball query whose indices
  the graph takes as inputs, and rooms prepared for training;
- `model.py`: a 3DETR-style detector whose class head compares one embedding per query with
  the request's class-name embeddings (`vocabulary.py`: the embedded MiniLM, prompted);
- `train.py` (set loss, Hungarian or one-to-many assignment), `postprocess.py` (3-D NMS,
  numpy only) and `metrics.py` (VOC-style AP at 3-D IoU thresholds).
"""
