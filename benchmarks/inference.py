"""CNN inference throughput: frames/s at batch 1 and batch 1024, CPU (and GPU when present).

Baseline, measured in the same run: the same network and weights in the default NCHW
layout, eager fp32 at batch 1 under ``torch.no_grad``. Variants: the shipped NHWC
(channels_last) layout, ``torch.inference_mode``, batch 1024, the full ``predict``
(validation + phase wrapping) and its test-time augmentation ``symmetries=8``; on CUDA also bf16 autocast and a CUDA graph at batch 1. Prints one line per case with frames/s, ms/frame and the ratio to
the baseline. Usage::

    python benchmarks/inference.py [--threads N] [--weights DEFAULT] [--paper-size]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from cdi_beamline.config import ModelConfig
from cdi_beamline.models import CDINet, cdinet, predict


def rate(fn, batch: int, blocks: int = 5, block_seconds: float = 0.4) -> float:
    """Frames per second of ``fn()`` (which processes ``batch`` frames): best of ``blocks``
    timed blocks (the best is the least disturbed on a shared machine), after a warm-up call."""
    fn()
    best = 0.0
    for _ in range(blocks):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= block_seconds:
                break
        best = max(best, n * batch / dt)
    return best


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cases(net: CDINet, device: torch.device, big: int):
    """(name, batch, callable) for this device; the first is the baseline."""
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

    yield "NCHW fp32, no_grad (baseline)", 1, run(nchw, x1)
    yield "NHWC (as shipped), no_grad", 1, run(net, x1)
    yield "NHWC, inference_mode", 1, run(net, x1, torch.inference_mode)
    yield "predict() (validation + wrap)", 1, lambda: (predict(net, x1), sync(device))
    yield "NCHW fp32, no_grad", big, run(nchw, xb)
    yield "NHWC (as shipped), no_grad", big, run(net, xb)
    yield "NHWC, inference_mode", big, run(net, xb, torch.inference_mode)
    yield "predict() (validation + wrap)", big, lambda: (predict(net, xb), sync(device))
    yield "predict(symmetries=8) (best of the square's 8)", big, lambda: (predict(net, xb, symmetries=8), sync(device))
    if device.type == "cuda":
        yield "NHWC, bf16 autocast", big, run(net, xb, torch.inference_mode, torch.bfloat16)
        yield (
            "NHWC, bf16 autocast",
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

        yield "CUDA graph, fp32", 1, replay


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--weights", default="DEFAULT", help="registry name of the shipped net to time")
    p.add_argument("--paper-size", action="store_true", help="also time the paper-size net (base_channels 32)")
    p.add_argument("--batch", type=int, default=1024, help="the large batch (default 1024)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    nets = [(f"shipped {args.weights}", cdinet(args.weights))]
    if args.paper_size:
        nets.append(("paper-size (random init)", CDINet(ModelConfig(base_channels=32))))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(
        f"# {platform.processor() or platform.machine()}, {args.threads} torch threads, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA")
    )
    for label, net in nets:
        for dev in devices:
            print(f"\n## {label}: {net.num_params():,} parameters, {dev}")
            print(f"{'case':40s} {'batch':>6s} {'frames/s':>11s} {'ms/frame':>9s} {'× baseline':>10s}")
            base = None
            for name, batch, fn in cases(net, dev, args.batch):
                r = rate(fn, batch)
                base = base or r
                print(f"{name:40s} {batch:6d} {r:11.1f} {1e3 / r:9.3f} {r / base:10.2f}", flush=True)


if __name__ == "__main__":
    main()
