#!/usr/bin/env python3
"""Latency / throughput of one ONNX model under onnxruntime (CPUExecutionProvider).

Usage:
  python bench_onnxruntime.py MODEL.onnx [--batch 64] [--iters 2000] [--warmup 100] [--threads 1]
  python bench_onnxruntime.py pm25_nowcast/model.onnx 1 10000     # positional batch, iters

Feeds random float32 rows of the model's input width (fixed seed; values drawn around a
plausible µg/m³ range) and prints one JSON object:
  p50_us, p99_us, mean_us, min_us   latency of one session.run() call, microseconds
  throughput_rows_per_s             batch * iters / total time of the timed loop
Single-threaded by default, to compare with tract on the Rust side.
"""
import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="path to model.onnx")
    ap.add_argument("batch_pos", nargs="?", type=int, help="batch size (same as --batch)")
    ap.add_argument("iters_pos", nargs="?", type=int, help="timed iterations (same as --iters)")
    ap.add_argument("--batch", type=int, default=None, help="rows per run (default 1)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default 2000)")
    ap.add_argument("--warmup", type=int, default=100, help="untimed iterations first (default 100)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    batch = a.batch if a.batch is not None else (a.batch_pos if a.batch_pos is not None else 1)
    iters = a.iters if a.iters is not None else (a.iters_pos if a.iters_pos is not None else 2000)
    if batch < 1 or iters < 1:
        sys.exit("batch and iters must be >= 1")

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.model, sess_options=so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    width = inp.shape[-1]
    if not isinstance(width, int):
        sys.exit(f"input {inp.name} has a symbolic last dimension {inp.shape}; cannot infer width")
    rng = np.random.default_rng(a.seed)
    x = rng.gamma(2.0, 25.0, size=(batch, width)).astype(np.float32)
    feed = {inp.name: x}
    out_names = [o.name for o in sess.get_outputs()]

    for _ in range(a.warmup):
        sess.run(out_names, feed)
    lat = np.empty(iters, dtype=np.float64)
    t_start = time.perf_counter_ns()
    for i in range(iters):
        t0 = time.perf_counter_ns()
        sess.run(out_names, feed)
        lat[i] = time.perf_counter_ns() - t0
    total_s = (time.perf_counter_ns() - t_start) / 1e9
    lat_us = lat / 1e3
    print(json.dumps({
        "runtime": "onnxruntime",
        "onnxruntime_version": ort.__version__,
        "provider": "CPUExecutionProvider",
        "threads": a.threads,
        "model": a.model,
        "input": {"name": inp.name, "shape": [batch, width]},
        "batch": batch,
        "iters": iters,
        "warmup": a.warmup,
        "p50_us": round(float(np.percentile(lat_us, 50)), 3),
        "p99_us": round(float(np.percentile(lat_us, 99)), 3),
        "mean_us": round(float(lat_us.mean()), 3),
        "min_us": round(float(lat_us.min()), 3),
        "throughput_rows_per_s": round(batch * iters / total_s, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
