"""CNN inference: ms per frame of the shipped CDINet at batch 1 and batched, on the CPU (and
CUDA when present), among them the first estimate of the live pipeline (``initial_estimate``:
``predict`` + support + embedding, at the live batch of 64).

Baseline, measured in the same repeat: the same network and weights in the default NCHW
layout, eager fp32 at batch 1 under ``torch.no_grad``. Each case is timed over one block of at
least ``--block-seconds`` after a warm-up call. On CUDA also bf16 autocast and a CUDA graph
at batch 1.

    ./run bench inference [--repeats N] -- [--threads 2] [--weights DEFAULT] [--batch 1024] [--symmetries]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _harness import Ratio, Row, main

from cdi_beamline.config import ModelConfig
from cdi_beamline.models import CDINet, cdinet, initial_estimate, predict

NAME = "inference"
TITLE = "CNN inference (shipped CDINet): ms per frame"
ROWS = [
    Row("nchw_1", "NCHW fp32 no_grad, batch 1 (baseline)", "ms/frame", 2),
    Row("nhwc_1", "NHWC (as shipped) no_grad, batch 1", "ms/frame", 2),
    Row("predict_1", "predict(), batch 1", "ms/frame", 2),
    Row("nchw_big", "NCHW fp32 no_grad, batch {batch}", "ms/frame", 2),
    Row("nhwc_big", "NHWC (as shipped) no_grad, batch {batch}", "ms/frame", 2),
    Row("predict_big", "predict(), batch {batch}", "ms/frame", 2),
    Row("estimate", "first estimate: initial_estimate(), batch {estimate_batch}", "ms/frame", 2),
    Row("sym8_big", "predict(symmetries=8), batch {batch}", "ms/frame", 2),
    Row("cuda_predict_1", "CUDA predict(), batch 1", "ms/frame", 3),
    Row("cuda_graph_1", "CUDA graph fp32, batch 1", "ms/frame", 3),
    Row("cuda_predict_big", "CUDA predict(), batch {batch}", "ms/frame", 4),
    Row("cuda_estimate", "CUDA initial_estimate(), batch {estimate_batch}", "ms/frame", 4),
    Row("cuda_bf16_8big", "CUDA NHWC bf16 autocast, batch 8×{batch}", "ms/frame", 4),
]
RATIOS = [
    Ratio("NCHW batch 1 / NHWC batch 1", "nchw_1", "nhwc_1"),
    Ratio("NCHW batch 1 / predict() batched", "nchw_1", "predict_big"),
    Ratio("NCHW batch 1 / first estimate batched", "nchw_1", "estimate"),
]


def time_per_frame(fn, batch: int, block_seconds: float) -> float:
    """ms per frame of ``fn()`` (which processes ``batch`` frames) over one block of calls
    lasting at least ``block_seconds``, after a warm-up call."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= block_seconds:
            return 1e3 * dt / (n * batch)


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cases(net: CDINet, device: torch.device, big: int, estimate_batch: int, symmetries: bool):
    """(row key, batch, callable) for this device."""
    net = net.to(device).eval()  # CDINet keeps its weights channels_last (NHWC)
    nchw = CDINet(net.config).to(device).eval()
    nchw.load_state_dict(net.state_dict())
    nchw = nchw.to(memory_format=torch.contiguous_format)
    x1 = torch.rand(1, 64, 64, device=device)
    xb = torch.rand(big, 64, 64, device=device)

    def run(model, x, mode=torch.no_grad, dtype=None):
        def f():
            with mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                model(x)
            sync(device)

        return f

    xe = torch.rand(estimate_batch, 64, 64, device=device)
    prefix = "" if device.type == "cpu" else "cuda_"
    yield prefix + "nchw_1", 1, run(nchw, x1)
    yield prefix + "nhwc_1", 1, run(net, x1)
    yield prefix + "predict_1", 1, lambda: (predict(net, x1), sync(device))
    yield prefix + "nchw_big", big, run(nchw, xb)
    yield prefix + "nhwc_big", big, run(net, xb)
    yield prefix + "predict_big", big, lambda: (predict(net, xb), sync(device))
    yield prefix + "estimate", estimate_batch, lambda: (initial_estimate(net, xe), sync(device))
    if symmetries:
        yield prefix + "sym8_big", big, lambda: (predict(net, xb, symmetries=8), sync(device))
    if device.type == "cuda":
        yield "cuda_bf16_big", big, run(net, xb, torch.inference_mode, torch.bfloat16)
        yield (
            "cuda_bf16_8big",
            8 * big,
            run(net, torch.rand(8 * big, 64, 64, device=device), torch.inference_mode, torch.bfloat16),
        )
        # CUDA graph at batch 1: capture once, replay.
        static = x1.clone()
        s = torch.cuda.Stream(device)
        s.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(s), torch.inference_mode():
            for _ in range(3):
                net(static)
        torch.cuda.current_stream(device).wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            net(static)

        def replay():
            graph.replay()
            sync(device)

        yield "cuda_graph_1", 1, replay


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--weights", default="DEFAULT", help="registry name of the shipped net (default DEFAULT)")
    ap.add_argument("--paper-size", action="store_true", help="time the paper-size net (random init) instead")
    ap.add_argument("--batch", type=int, default=256, help="the large batch (default 256)")
    ap.add_argument("--estimate-batch", type=int, default=64, help="batch of the first estimate (default 64, live)")
    ap.add_argument("--symmetries", action="store_true", help="also time predict(symmetries=8) (8x the cost)")
    ap.add_argument("--block-seconds", type=float, default=1.0, help="minimum timed block per case (default 1 s)")


def params(args: argparse.Namespace) -> dict:
    return {
        "weights": "paper-size, random" if args.paper_size else args.weights,
        "threads": args.threads,
        "batch": args.batch,
        "first-estimate batch": args.estimate_batch,
    }


def setup(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    net = CDINet(ModelConfig(base_channels=32)) if args.paper_size else cdinet(args.weights)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return {"net": net, "devices": devices}


def measure(args: argparse.Namespace, state: dict) -> dict:
    out: dict = {"info": {"parameters": state["net"].num_params()}}
    for dev in state["devices"]:
        for key, batch, fn in cases(state["net"], dev, args.batch, args.estimate_batch, args.symmetries):
            out[key] = time_per_frame(fn, batch, args.block_seconds)
    return out


if __name__ == "__main__":
    main(sys.modules[__name__])
