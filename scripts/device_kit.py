"""Pack what a benchmark grid needs on a machine that receives only the repository: the
encoder and the GLUE files, into the ignored folder ``device_kit/`` of the checkout.

    python scripts/device_kit.py                       # MiniLM in float16, RTE MRPC CoLA STS-B
    python scripts/q1_grid.py run --encoder device_kit/all-MiniLM-L6-v2 \\
        --data-dir device_kit/data --results bench_results/q1-gpu.jsonl ...

The encoder is stored in float16 to halve it (mtsmart trains in float32 whatever dtype an
encoder was saved in); its weights are then the float32 ones rounded to float16, so a grid
run from the kit compares with itself (plain and SMART on the same kit), not with CPU runs
of the original weights. The last line printed is the kit's size, which must stay under
what travels with the repository.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MTSMART_SHARED", REPO.parent / "shared"))
GLUE_DIRS = {"rte": "RTE", "mrpc": "MRPC", "cola": "CoLA", "stsb": "STS-B", "sst2": "SST-2"}
SPLIT_FILES = ("train.tsv", "dev.tsv")


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="rte,mrpc,cola,stsb", help=f"of {', '.join(GLUE_DIRS)}")
    parser.add_argument("--encoder", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--out", default=str(REPO / "device_kit"))
    args = parser.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in GLUE_DIRS]
    if unknown:
        parser.error(f"--tasks: unknown {unknown[0]!r} (valid: {', '.join(GLUE_DIRS)})")

    import torch
    from transformers import AutoModel, AutoTokenizer

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    for task in tasks:
        target = out / "data" / "glue" / GLUE_DIRS[task]
        target.mkdir(parents=True)
        for name in SPLIT_FILES:
            shutil.copy2(SHARED / "data" / "glue" / GLUE_DIRS[task] / name, target / name)
    encoder_out = out / Path(args.encoder).name
    AutoModel.from_pretrained(args.encoder).to(torch.float16).save_pretrained(encoder_out)
    AutoTokenizer.from_pretrained(args.encoder).save_pretrained(encoder_out)
    print(f"tasks: {', '.join(tasks)}; encoder: {encoder_out}")
    print(f"{out}: {folder_size(out) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
