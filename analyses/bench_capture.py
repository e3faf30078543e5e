"""Benchmark: cost of full per-loop capture relative to a plain forward pass.

dim 256, 8 experts, 8 loops (all run), batch 8, seq 64, 2 threads. Paired runs (plain, capture,
plain, capture, ...) after warm-up; the figure is the median of the per-pair ratios.

    python analyses/bench_capture.py [--pairs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# glibc's malloc returning memory to the OS between runs makes timings swing by 10 %.
_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
if any(os.environ.get(k) != v for k, v in _ENV.items()):
    os.environ.update(_ENV)
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

from mythos_lens.adapters.openmythos import SITES  # noqa: E402
from mythos_lens.capture import capture  # noqa: E402
from mythos_lens.model import build_model, tiny_config  # noqa: E402

DEFAULT_SITES = list(SITES.resolve(None))

BENCH_CONFIG = dict(
    vocab_size=512, dim=256, n_heads=8, n_kv_heads=2, max_seq_len=64, max_loop_iters=8,
    n_experts=8, n_experts_per_tok=2, n_shared_experts=1, expert_dim=128, lora_rank=8,
    act_threshold=1e9,
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(tiny_config(**BENCH_CONFIG), seed=0)
    ids = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(0))

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return model(ids, n_loops=8)

    def full() -> torch.Tensor:
        return capture(model, ids, n_loops=8).logits

    def full_read() -> torch.Tensor:
        trace = capture(model, ids, n_loops=8)
        for site in trace.sites:  # stack every site into [loop, ...] (LazyStack does it on read)
            trace[site]
        return trace.logits

    def with_attention() -> torch.Tensor:
        # every default site plus the shared block's attention pattern at every loop
        return capture(model, ids, n_loops=8, sites=[*DEFAULT_SITES, "attn_pattern"]).logits

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    assert torch.equal(plain(), full()) and torch.equal(plain(), full_read())
    assert torch.equal(plain(), with_attention())
    for _ in range(5):
        timed(plain), timed(full), timed(full_read), timed(with_attention)
    t_plain, t_cap, t_read, t_attn, r_cap, r_read, r_attn = [], [], [], [], [], [], []
    for _ in range(args.pairs):  # A B C D A B C D ...: each ratio against the plain run beside it
        a, b, c, d = timed(plain), timed(full), timed(full_read), timed(with_attention)
        t_plain.append(a), t_cap.append(b), t_read.append(c), t_attn.append(d)
        r_cap.append(b / a), r_read.append(c / a), r_attn.append(d / a)
    med = statistics.median
    print(f"plain forward                  median {med(t_plain) * 1e3:7.1f} ms")
    print(
        f"capture, every site, 8 loops   median {med(t_cap) * 1e3:7.1f} ms  ratio {med(r_cap):.3f}"
    )
    print(
        f"  + every site read ([loop,..]) median {med(t_read) * 1e3:7.1f} ms  ratio {med(r_read):.3f}"
    )
    print(
        f"  + attention pattern per loop  median {med(t_attn) * 1e3:7.1f} ms  ratio {med(r_attn):.3f}"
    )
    print(f"({args.pairs} paired runs; ratios are medians of per-pair ratios)")


if __name__ == "__main__":
    main()
