"""Start-up: `python app.py --model tinystories --port P` until the page answers HTTP 200.

Three parts, all in fresh processes (a warm process would hide the imports):
  end to end   app.py as a user starts it, from the process start to the first 200 on `/`,
               polled every 50 ms; several repetitions, median (issue 6's target: <= 10 s)
  phases       what app.py does, timed one by one in a child process: Python itself, the
               imports, loading the model, create_demo, launch (until it returns), and the first
               GET of the page; medians over repetitions
  imports      `python -X importtime -c "import tokstep.web.page"`: the import time of each top-level
               package (its modules' own time summed, so nothing is counted twice) and the
               largest single imports with what they pull in

    python -m bench.startup            # 5 starts, 3 phase runs, the import breakdown
    python -m bench.startup --quick    # 3 starts, 1 phase run
    python -m bench.startup --smoke    # 1 start, no breakdown (the test suite's)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

from bench.common import BUNDLED, QUIET_ENV, ROOT, fmt, free_port, http_ok, machine_line, median, print_table, verdict

TARGET_S = 10.0
POLL_S = 0.05
TIMEOUT_S = 180.0
ENV = {**os.environ, **QUIET_ENV}


def app_start_s(model: str) -> float:
    """Seconds from starting `python app.py` to the first HTTP 200 on its page."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--model", model, "--port", str(port)],
        cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while not http_ok(url, timeout=5.0):
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with status {process.returncode}: {process.stderr.read()[-2000:]}")
            if time.perf_counter() - started > TIMEOUT_S:
                raise TimeoutError(f"app.py did not answer within {TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
        return time.perf_counter() - started
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def child_phases(model: str) -> None:
    """Run in a fresh process (--phases-child): app.py's steps one by one, timed; prints JSON."""
    started = time.perf_counter()
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        marks[name] = time.perf_counter()

    import gradio  # noqa: F401  (timed apart from tokstep's own imports: it is most of them)

    mark("import gradio")
    import torch  # noqa: F401
    import transformers  # noqa: F401

    mark("import torch, transformers")
    from tokstep.web.deployment import Tweaks, apply_process_tweaks, server_runtime
    from tokstep.web.page import LAUNCH_OPTIONS, create_demo
    from tokstep.web.share import launch  # noqa: F401  (app.py's imports, in app.py's order)
    from tokstep.web.startup import load_for_app

    tweaks = Tweaks()
    apply_process_tweaks(tweaks)

    mark("import tokstep (the rest)")
    lm, notice = load_for_app(model, env_model=None, default="gpt2")
    mark("load the model")
    demo = create_demo(lm, notice=notice, runtime=server_runtime(tweaks))
    mark("create_demo (packing included)")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    mark("launch (until it returns)")
    ok = http_ok(f"http://127.0.0.1:{port}/", timeout=30.0)
    mark("first GET / (200)" if ok else "first GET / (FAILED)")
    demo.close()
    previous, phases = started, {}
    for name, at in marks.items():
        phases[name] = at - previous
        previous = at
    print(json.dumps(phases))


def phases_s(model: str) -> dict[str, float]:
    """One child process's phases, with Python's own start (the child's start to its first line)."""
    python_started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=ENV)
    python_s = time.perf_counter() - python_started
    output = subprocess.run(
        [sys.executable, "-m", "bench.startup", "--phases-child", "--model", model],
        cwd=ROOT, env=ENV, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {"python itself": python_s} | json.loads(output.strip().splitlines()[-1])


@dataclass
class Import:
    """One line of -X importtime: a module, its nesting depth, its cumulative and own seconds."""

    name: str
    depth: int
    cumulative: float
    own: float
    children: list[Import] = field(default_factory=list)


ImportRow = tuple[str, float, float]  # (indented name, cumulative s, own s)


def importtime_tree(stderr: str) -> list[Import]:
    """The import tree from -X importtime's lines, which come children first (post-order)."""
    pending: list[Import] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own_us, cumulative_us, raw_name = line.removeprefix("import time:").split("|")
        name = raw_name.rstrip()
        node = Import(name.strip(), (len(name) - len(name.lstrip())) // 2, int(cumulative_us) / 1e6, int(own_us) / 1e6)
        while pending and pending[-1].depth > node.depth:
            node.children.insert(0, pending.pop())
        pending.append(node)
    return pending


def heavy_imports(roots: list[Import], threshold: float) -> list[ImportRow]:
    """(indented name, cumulative s, own s) of every import over `threshold` seconds, as a tree."""
    rows = []

    def visit(node: Import, level: int) -> None:
        if node.cumulative < threshold:
            return
        rows.append(("  " * level + node.name, node.cumulative, node.own))
        for child in node.children:
            visit(child, level + 1)

    for root in roots:
        visit(root, 0)
    return rows


def import_breakdown(top: int, threshold: float) -> tuple[list[tuple[str, float]], list[ImportRow], float]:
    """From `python -X importtime -c "import tokstep.web.page"`: seconds per top-level package (its
    modules' own time summed), the import tree pruned to imports over `threshold` seconds, total."""
    stderr = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import tokstep.web.page"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    roots = importtime_tree(stderr)
    by_package: dict[str, float] = defaultdict(float)
    stack = list(roots)
    while stack:
        node = stack.pop()
        by_package[node.name.split(".")[0]] += node.own
        stack.extend(node.children)
    total = sum(by_package.values())
    packages = sorted(by_package.items(), key=lambda item: -item[1])[:top]
    return packages, heavy_imports(roots, threshold), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 starts, 1 phase run")
    parser.add_argument("--smoke", action="store_true", help="1 start, no breakdown")
    parser.add_argument("--repeats", type=int, default=5, help="starts of app.py (median kept)")
    parser.add_argument("--model", default=BUNDLED, help="the model app.py starts with")
    parser.add_argument("--top", type=int, default=15, help="rows of the import breakdown")
    parser.add_argument("--threshold", type=float, default=0.25, help="smallest import shown in the tree, s")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--phases-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phases_child:
        child_phases(args.model)
        return
    starts = 1 if args.smoke else 3 if args.quick else args.repeats
    phase_runs = 1 if args.quick else 3

    print(machine_line())
    times = [app_start_s(args.model) for _ in range(starts)]
    print(f"\npython app.py --model {args.model}: process start to the first HTTP 200 on / ({starts} starts)")
    print_table(
        ["start-up", "median s", "min s", "max s", f"target <= {TARGET_S:g} s"],
        [["app.py", fmt(median(times), 2), fmt(min(times), 2), fmt(max(times), 2), verdict(median(times) <= TARGET_S)]],
        markdown=args.markdown,
    )

    if args.smoke:
        return
    runs = [phases_s(args.model) for _ in range(phase_runs)]
    names = list(runs[0])
    phase_medians = {name: median([run.get(name, float("nan")) for run in runs]) for name in names}
    total = sum(phase_medians.values())
    print(f"\nwhere the time goes (each phase in a fresh process, median of {phase_runs}):")
    rows = [[name, fmt(seconds, 2), fmt(100 * seconds / total, 0)] for name, seconds in phase_medians.items()]
    print_table(["phase", "s", "%"], [*rows, ["total", fmt(total, 2), "100"]], markdown=args.markdown)

    packages, largest, import_total = import_breakdown(args.top, args.threshold)
    print(f"\nimport tokstep.web.page under -X importtime ({import_total:.2f} s in all; importtime adds its own cost):")
    print_table(
        ["package", "own s", "%"],
        [[name, fmt(seconds, 2), fmt(100 * seconds / import_total, 0)] for name, seconds in packages],
        markdown=args.markdown,
    )
    print(f"\nimports over {args.threshold:g} s (cumulative: with all they import; own: the module alone), as a tree:")
    print_table(
        ["module", "cumulative s", "own s"],
        [[name, fmt(cumulative, 2), fmt(own, 2)] for name, cumulative, own in largest],
        markdown=args.markdown,
    )


if __name__ == "__main__":
    main()
