"""tritonforge: research models to verified ONNX artifacts, served by NVIDIA Triton."""

import os

__version__ = "0.1.0"

# gRPC's fork support (on by default in grpcio) runs handlers in every forked child. tritonforge
# never uses gRPC in a child, but it does start ffmpeg (video in and out) while a client is
# connected: the handlers then write epoll errors into ffmpeg's stderr, which imageio parses,
# and the decode fails. Set before grpc is first imported; an explicit setting wins.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
