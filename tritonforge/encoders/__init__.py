"""Encoders that several families build on (BERT: the checkpoint checks and the written-out,
quantizable encoder shared by the bert and dask families). Never imports a family."""
