"""``python -m leaderboard --out public``: render the leaderboard from the records."""

import argparse
from pathlib import Path

from leaderboard.build import build_site

parser = argparse.ArgumentParser(prog="python -m leaderboard",
                                 description="Render the static leaderboard from the records.")
parser.add_argument("--records", type=Path, default=None,
                    help="records folder (default: results/records of the project)")
parser.add_argument("--out", type=Path, default=Path("public"), help="output folder")
args = parser.parse_args()
index = build_site(args.records, args.out)
print(f"leaderboard written to {index}")
