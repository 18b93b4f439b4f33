"""Serving: the model repository (atomic versions, manifests), a real Triton run here
(`local`), the gRPC client behind `query`, `bench` and `soak`, and remote endpoints."""
