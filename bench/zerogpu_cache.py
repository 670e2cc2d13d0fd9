"""ZeroGPU: re-read the ids in each GPU call, or move the KV cache in and out? Measured on this machine.

On a ZeroGPU Space each pass is a `spaces.GPU` call in a forked worker; what the call takes and
returns is pickled through a pipe, and nothing stays on the GPU after it (tokstep.runtimes.zerogpu).
A sequence's next pass can then either

  reread   send all n ids and run the model over them again (no cache crosses the pipe), or
  move     send the KV cache of the n - 1 ids read so far, run one token, send the cache back.

Per token, this script times, for sequences of n tokens, the parts either costs in this process:
the pass itself (over n ids, or one id on a cache of n - 1), and what crosses the pipe (pickling
and unpickling the arguments and the result: ids and the summary; for `move`, the cache both ways,
and a copy of it each way as a stand-in for the host-to-GPU copies). The passes run on this
machine's CPU; on a GPU a pass over n ids costs about what one token's does up to several hundred
tokens (docs/deploy.md, "ZeroGPU"), while the cache's bytes cost the same. Prints a table and the
ratio move / reread per length.

    python -m bench.zerogpu_cache             # GPT-2-small shape and the bundled model
    python -m bench.zerogpu_cache --smoke     # the bundled model, two lengths, one repetition
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time

import torch
from transformers.cache_utils import DynamicCache

from bench.common import BUNDLED, GPT2_SMALL_SHAPE, build_model, machine_line, print_table, prompt_ids
from tokstep.core.distribution import summarize
from tokstep.core.forward import output_cache
from tokstep.core.model import LanguageModel


def pass_ms(lm: LanguageModel, ids: list[int], cache: DynamicCache | None) -> tuple[float, object, object]:
    started = time.perf_counter()
    with torch.inference_mode():
        output = lm.model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1)
        (summary,) = summarize(output.logits[:, -1])
    return (time.perf_counter() - started) * 1000.0, summary, output_cache(output)


def ship_ms(*objects: object) -> tuple[float, int]:
    """Milliseconds to pickle and unpickle `objects` (one crossing of the worker's pipe), and their bytes."""
    started = time.perf_counter()
    data = pickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL)
    pickle.loads(data)
    return (time.perf_counter() - started) * 1000.0, len(data)


def layers_of(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def measure(lm: LanguageModel, n: int, repeats: int) -> dict[str, float]:
    ids = prompt_ids(lm, n)
    rows: dict[str, list[float]] = {key: [] for key in ("reread", "move", "reread_pass", "move_pass", "move_ship")}
    sizes = {}
    for _ in range(repeats):
        # reread: all n ids in, the summary out.
        in_ms, in_bytes = ship_ms(ids)
        run_ms, summary, _ = pass_ms(lm, ids, None)
        out_ms, out_bytes = ship_ms(summary.logits, summary.probs)
        rows["reread_pass"].append(run_ms)
        rows["reread"].append(in_ms + run_ms + out_ms)
        sizes["reread"] = in_bytes + out_bytes
        # move: the cache of n - 1 ids in (pickled, then copied as to the GPU), one id, the cache back out.
        _, _, cache = pass_ms(lm, ids[:-1], None)
        layers = layers_of(cache)
        in_ms, in_bytes = ship_ms(ids[-1:], layers)
        started = time.perf_counter()
        device_cache = DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in layers])
        copy_in_ms = (time.perf_counter() - started) * 1000.0
        run_ms, summary, new_cache = pass_ms(lm, ids[-1:], device_cache)
        started = time.perf_counter()
        back = [(k.clone(), v.clone()) for k, v in layers_of(new_cache)]
        copy_out_ms = (time.perf_counter() - started) * 1000.0
        out_ms, out_bytes = ship_ms(summary.logits, summary.probs, back)
        rows["move_pass"].append(run_ms)
        rows["move_ship"].append(in_ms + copy_in_ms + copy_out_ms + out_ms)
        rows["move"].append(in_ms + copy_in_ms + run_ms + copy_out_ms + out_ms)
        sizes["move"] = in_bytes + out_bytes
    result = {key: statistics.median(values) for key, values in rows.items()}
    result["reread_bytes"], result["move_bytes"] = sizes["reread"], sizes["move"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the bundled model, two lengths, one repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    models = [BUNDLED] if args.smoke else [GPT2_SMALL_SHAPE, BUNDLED]
    lengths = (16, 128) if args.smoke else (16, 64, 256, 1000)
    repeats = 1 if args.smoke else args.repeats
    print(machine_line())
    rows = []
    for name in models:
        lm = build_model(name, device="cpu", pack_weights=False)
        for n in lengths:
            if lm.context_length is not None and n > lm.context_length:
                continue
            pass_ms(lm, prompt_ids(lm, n), None)  # warm-up
            m = measure(lm, n, repeats)
            rows.append(
                [
                    lm.name if name == BUNDLED else "GPT-2-small shape",
                    str(n),
                    f"{m['reread']:.2f}",
                    f"{m['reread_pass']:.2f}",
                    f"{m['reread_bytes'] / 1e3:,.0f}",
                    f"{m['move']:.2f}",
                    f"{m['move_pass']:.2f}",
                    f"{m['move_ship']:.2f}",
                    f"{m['move_bytes'] / 1e3:,.0f}",
                    f"{m['move'] / m['reread']:.2f}",
                ]
            )
    headers = [
        "model",
        "tokens",
        "reread ms",
        "of it pass",
        "reread kB",
        "move ms",
        "of it pass",
        "of it cache",
        "move kB",
        "move / reread",
    ]
    print_table(headers, rows, markdown=args.markdown)


if __name__ == "__main__":
    main()
