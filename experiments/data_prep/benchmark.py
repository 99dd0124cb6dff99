"""Data preparation speed: gptlab's threaded token cache against single-threaded ``encode``.

A corpus of ``--mb`` megabytes is generated into a temporary directory from Python's own reference
documentation (``pydoc_data.topics``, about 0.46 MB): each copy shuffles the paragraphs of every
topic and numbers itself, so no two copies are the same text. It is written as files of about
8 MB, each a document. Every method then runs in a fresh Python process, so its peak resident
memory (``ru_maxrss``) is its own:

* ``encode``: read every file, join them with ``<|endoftext|>`` and call ``tokenizer.encode`` once,
  as the book's chapter 2 does with one text;
* ``build_token_cache`` with 1 thread and with every core: the streamed, memory-mapped cache.

All must produce the same ids (checked by a digest). Prints a markdown table.

    python experiments/data_prep/benchmark.py --mb 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gptlab.callbacks.throughput import cpu_name

FILE_BYTES = 8 << 20


def write_corpus(directory: Path, megabytes: float, seed: int = 0) -> int:
    """Write about ``megabytes`` MB of perturbed pydoc topics as ``*.txt`` files; return the byte count."""
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    paragraphs = [text.split("\n\n") for _, text in sorted(topics.items())]
    target, written, copy, index = int(megabytes * 1e6), 0, 0, 0
    while written < target:
        parts: list[str] = []
        size = 0
        while size < FILE_BYTES and written + size < target:
            topic = list(paragraphs[copy % len(paragraphs)])
            rng.shuffle(topic)
            text = f"Copy {copy} of a reference topic, seed {rng.randrange(10**6)}.\n\n" + "\n\n".join(topic)
            parts.append(text)
            size += len(text.encode("utf-8"))
            copy += 1
        data = "\n\n".join(parts).encode("utf-8")
        (directory / f"part{index:04d}.txt").write_bytes(data)
        written += len(data)
        index += 1
    return written


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def run_method(method: str, corpus: str, threads: int) -> dict[str, float | str | int]:
    """Tokenize the corpus with one method (in this process); the child side of ``measure``."""
    import hashlib

    import numpy as np

    from gptlab.data import build_token_cache, local_text_source, open_tokens
    from gptlab.tokenizer import END_OF_TEXT, get_tokenizer

    tokenizer = get_tokenizer("gpt2")
    tokenizer.encode("warm up")
    source = local_text_source(corpus)
    base_rss = _rss_mb()
    start = time.perf_counter()
    if method == "encode":
        text = END_OF_TEXT.join(path.read_text(encoding="utf-8") for path in source.paths)
        ids = tokenizer.encode(text)
        seconds, peak = time.perf_counter() - start, _peak_rss_mb()
        tokens = np.asarray(ids, dtype=np.uint16)
    else:
        with tempfile.TemporaryDirectory() as cache:
            path = build_token_cache(source, tokenizer, cache, progress=False, num_threads=threads)
            seconds, peak = time.perf_counter() - start, _peak_rss_mb()
            tokens = np.array(open_tokens(path))
    return {"seconds": seconds, "peak_rss_mb": peak, "base_rss_mb": base_rss, "tokens": len(tokens),
            "digest": hashlib.sha256(tokens.tobytes()).hexdigest()[:16]}


def measure(method: str, corpus: Path, threads: int) -> dict[str, float | str | int]:
    """Run ``method`` in a fresh interpreter, so peak RSS and warm-up are its own."""
    command = [sys.executable, __file__, "--child", method, "--corpus", str(corpus), "--threads", str(threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0, help="corpus size in MB (UTF-8 bytes)")
    parser.add_argument("--threads", type=int, default=None, help="threads of the parallel build (default: all)")
    parser.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    if args.child:
        print(json.dumps(run_method(args.child, args.corpus, threads)))
        return

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gptlab-corpus-") as corpus:
        start = time.perf_counter()
        size = write_corpus(Path(corpus), args.mb)
        print(f"corpus: {size / 1e6:.1f} MB in {len(os.listdir(corpus))} files, "
              f"written in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        methods = {"`tokenizer.encode` (one text, 1 thread)": ("encode", 1),
                   "`build_token_cache`, 1 thread": ("cache", 1),
                   f"`build_token_cache`, {threads} threads": ("cache", threads)}
        results = {}
        for name, (method, n) in methods.items():
            results[name] = measure(method, Path(corpus), n)
            print(f"{name}: {results[name]}", file=sys.stderr)

    base = results[next(iter(results))]
    print(f"\nCPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores; corpus {size / 1e6:.1f} MB "
          f"({base['tokens']:,} GPT-2 tokens); 1-minute load average at the start: {load:.2f}\n")
    print("| method | seconds | MB/s | speed vs `encode` | peak RSS (MB) | RSS after imports (MB) | same ids |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, r in results.items():
        mbs = size / 1e6 / float(r["seconds"])
        print(f"| {name} | {float(r['seconds']):.1f} | {mbs:.2f} | {float(base['seconds']) / float(r['seconds']):.2f}x | "
              f"{float(r['peak_rss_mb']):,.0f} | {float(r['base_rss_mb']):,.0f} | "
              f"{'yes' if r['digest'] == base['digest'] else 'NO'} |")
    if any(r["digest"] != base["digest"] for r in results.values()):
        raise SystemExit("the methods produced different ids")


if __name__ == "__main__":
    main()
