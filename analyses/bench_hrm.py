"""Benchmark: capture of every HRM-Text step vs a plain forward (target <= 1.05x).

hidden 256, 2 layers per stack, H = 2, L = 3, batch 8, seq 64; paired runs (plain, capture,
plain, capture, ...) after warm-up, the figure is the median of per-pair ratios. "Every step":
all default sites (each L and H call's input, output and layer outputs) of all 8 stack calls.

    python analyses/bench_hrm.py [--pairs 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
if any(os.environ.get(k) != v for k, v in _ENV.items()):
    os.environ.update(_ENV)
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
from transformers import HrmTextConfig, HrmTextForCausalLM  # noqa: E402

from mythos_lens.capture import capture  # noqa: E402

CONFIG = dict(vocab_size=1024, hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
              num_attention_heads=4, head_dim=64, H_cycles=2, L_cycles=3,
              max_position_embeddings=64, prefix_lm=False)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = HrmTextForCausalLM(HrmTextConfig(**CONFIG)).eval()
    ids = torch.randint(0, 1024, (8, 64), generator=torch.Generator().manual_seed(0))

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits

    def captured() -> torch.Tensor:
        return capture(model, ids).logits

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    assert torch.equal(plain(), captured())
    for _ in range(5):
        timed(plain), timed(captured)
    tp, tc, ratio = [], [], []
    for _ in range(args.pairs):
        a, b = timed(plain), timed(captured)
        tp.append(a), tc.append(b), ratio.append(b / a)
    med = statistics.median
    print(f"plain forward                 median {med(tp) * 1e3:7.1f} ms")
    print(f"capture, every step and site  median {med(tc) * 1e3:7.1f} ms  ratio {med(ratio):.3f}")
    print(
        f"({args.pairs} paired runs, {args.threads} thread(s); ratio = median of per-pair ratios)"
    )


if __name__ == "__main__":
    main()
