"""Benchmark: `sidecar check` of a generated 1000-rule configuration (target <= 1 s).

    .venv/bin/python bench/bench_check.py [--rules 1000] [--canaries 20] [--repeat 5]

Writes the configuration to a temporary directory (one server file, one canary
file, rules split over ten files), then times `sidecar.dsl.load()` (read, parse,
validate, build the Config) — everything `check` does except printing. The
grammar is built once before timing, as a long-running `serve` would have it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sidecar.dsl import load
from sidecar.dsl.parser import parse


def generate(directory: Path, rules: int, canaries: int) -> None:
    (directory / "00-server.mirror").write_text(
        "listen 127.0.0.1:8080\nadmin 127.0.0.1:9901\nprimary http://127.0.0.1:8081 { timeout 30s }\n"
    )
    blocks = [
        f"canary c{i} {{\n    server http://127.0.0.1:{9000 + i}\n    server http://127.0.0.1:{9500 + i} weight 2\n"
        f'    workers 8\n    queue 256\n    timeout 10s\n    max_body 1MiB\n    set header "X-Shadow" "c{i}"\n}}\n'
        for i in range(canaries)
    ]
    (directory / "10-canaries.mirror").write_text("\n".join(blocks))
    per_file = max(1, rules // 10)
    for f in range(0, rules, per_file):
        text = []
        for i in range(f, min(rules, f + per_file)):
            text.append(
                f"mirror r{i} {{\n"
                f'    when method in (GET, HEAD) and path ^= "/api/{i}/" and not header "X-Debug" exists\n'
                f'    sample {1 + i % 50}% by header "X-User-Id"\n'
                f"    to c{i % canaries}, c{(i + 1) % canaries}\n}}\n"
            )
        (directory / f"20-rules-{f:05d}.mirror").write_text("\n".join(text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--canaries", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    t0 = time.perf_counter()
    parse("")  # builds the grammar and the parse tables
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        generate(d, args.rules, args.canaries)
        size = sum(p.stat().st_size for p in d.iterdir())
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            result = load([d])
            times.append(time.perf_counter() - t)
        assert result.config is not None, result.diagnostics[:3]
        assert len(result.config.rules) == args.rules
    print(f"grammar build (once per process): {build_s:.3f} s")
    print(
        f"check of {args.rules} rules, {args.canaries} canaries ({size / 1024:.0f} KiB, "
        f"{len(result.files)} files): median {statistics.median(times):.3f} s, "
        f"min {min(times):.3f} s over {args.repeat} runs (target <= 1 s)"
    )


if __name__ == "__main__":
    main()
