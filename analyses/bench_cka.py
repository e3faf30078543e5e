"""Benchmark: debiased linear CKA loop × loop matrix, batch vs streaming.

16 loops, 50,000 tokens × d=256 (float32 features, float64 accumulators). "batch" holds every
token in memory and calls ``cka_matrix``; "streaming" draws the same tokens batch by batch and
feeds ``StreamingCKA``, so only one batch is ever alive. Reports median wall time of the CKA
computation and median peak RSS (each measurement in a fresh process; ru_maxrss above the
post-import baseline — tracemalloc does not see torch's allocations). Also checks
streaming == batch and the feature-space estimator against the n×n Gram reference on a small n.

    .venv/bin/python analyses/bench_cka.py [--loops 16] [--tokens 50000] [--dim 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from probes.similarity import StreamingCKA, cka_matrix


def make_batch(loops: int, n: int, d: int, seed: int) -> torch.Tensor:
    """Loop-correlated random features: h_t = 0.8 h_{t-1} + noise (float32)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(loops, n, d)
    x[0] = torch.randn(n, d, generator=g)
    for t in range(1, loops):
        x[t] = 0.8 * x[t - 1] + 0.6 * torch.randn(n, d, generator=g)
    return x


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_batch(loops: int, n: int, d: int, chunk: int) -> tuple[float, torch.Tensor]:
    x = torch.cat([make_batch(loops, min(chunk, n - s), d, seed=s) for s in range(0, n, chunk)], 1)
    t0 = time.perf_counter()
    m = cka_matrix(x, "debiased", batch_size=chunk)
    return time.perf_counter() - t0, m


def run_streaming(loops: int, n: int, d: int, chunk: int) -> tuple[float, torch.Tensor]:
    acc = StreamingCKA(loops, d, "debiased")
    dt = 0.0
    for s in range(0, n, chunk):
        xb = make_batch(loops, min(chunk, n - s), d, seed=s)  # not timed: stands for capture
        t0 = time.perf_counter()
        acc.update(xb)
        dt += time.perf_counter() - t0
        del xb
    t0 = time.perf_counter()
    m = acc.matrix()
    return dt + time.perf_counter() - t0, m


def child(args: argparse.Namespace) -> None:
    """One measurement in a fresh process: time, and peak RSS above the post-import baseline."""
    torch.set_num_threads(args.threads)
    base = rss_mb()
    fn = run_batch if args.mode == "batch" else run_streaming
    dt, m = fn(args.loops, args.tokens, args.dim, args.chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(m, args.out)
    print(json.dumps({"seconds": dt, "peak_mb": peak - base}))


def check_small() -> float:
    """Max |feature-space − Gram reference| on n=300 tokens, 4 loops, d=32."""
    x = make_batch(4, 300, 32, seed=7).double()
    got = cka_matrix(x, "debiased")
    n = 300
    one = torch.ones(n, dtype=torch.float64)

    def hsic(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        K, L = K.clone(), L.clone()
        K.fill_diagonal_(0)
        L.fill_diagonal_(0)
        return (
            torch.trace(K @ L)
            + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ K @ L @ one)
        ) / (n * (n - 3))

    G = [xi @ xi.T for xi in x]
    err = 0.0
    for t in range(4):
        for u in range(4):
            ref = hsic(G[t], G[u]) / torch.sqrt(hsic(G[t], G[t]) * hsic(G[u], G[u]))
            err = max(err, abs(float(ref) - float(got[t, u])))
    return err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loops", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=["batch", "streaming"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return child(args)
    torch.set_num_threads(args.threads)
    L, n, d = args.loops, args.tokens, args.dim
    print(f"feature-space vs n×n Gram reference (n=300): max |diff| = {check_small():.2e}")
    flops = n * d * d * L * (L + 1) / 2 * 2
    print(f"{L} loops, {n} tokens, d={d}: {flops / 1e9:.0f} GFLOP of cross-products (exact)")
    res: dict[str, list[dict[str, float]]] = {"batch": [], "streaming": []}
    mats = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):  # paired A B A B ..., each in a fresh process
            for mode in res:
                out = os.path.join(tmp, f"{mode}.pt")
                cmd = [sys.executable, __file__, "--mode", mode, "--out", out]
                for k in ("loops", "tokens", "dim", "chunk", "threads"):
                    cmd += [f"--{k}", str(getattr(args, k))]
                done = subprocess.run(cmd, check=True, capture_output=True, text=True)
                res[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
                mats[mode] = torch.load(out)
    diff = float((mats["batch"] - mats["streaming"]).abs().max())
    data_mb = L * n * d * 4 / 2**20
    print(f"input features: {data_mb:.0f} MB (float32); max |batch − streaming| = {diff:.1e}")
    print(f"{'mode':<10} {'median s':>9} {'GFLOP/s':>8} {'peak MB':>8}   runs (s)")
    for name, rows in res.items():
        ts = [r["seconds"] for r in rows]
        med = statistics.median(ts)
        peak = statistics.median(r["peak_mb"] for r in rows)
        runs = " ".join(f"{t:.2f}" for t in ts)
        print(f"{name:<10} {med:9.2f} {flops / med / 1e9:8.1f} {peak:8.0f}   {runs}")
    print("peak MB = peak RSS of a fresh process above its post-import baseline (includes data)")


if __name__ == "__main__":
    main()
