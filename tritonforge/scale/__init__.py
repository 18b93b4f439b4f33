"""Scaling out: the model repository pushed to object storage (`push`), deployed on KServe
(`deploy kserve`), and sized from a measured `bench` curve (`plan`)."""
