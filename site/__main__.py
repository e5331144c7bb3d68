"""``python -m leaderboard --out public``: render the leaderboard from the records."""

import argparse
import sys
from pathlib import Path

from leaderboard.build import SiteFolderError, SiteWriteError, build_site

from results import RecordError

parser = argparse.ArgumentParser(prog="python -m leaderboard",
                                 description="Render the static leaderboard from the records.")
parser.add_argument("--records", type=Path, default=None,
                    help="records folder (default: results/records of the project)")
parser.add_argument("--out", type=Path, default=Path("public"),
                    help="output folder: new, empty, or one this command created earlier "
                    "(it holds a .qbench-site marker); any other non-empty folder is refused")
args = parser.parse_args()
try:
    index = build_site(args.records, args.out)
except (SiteFolderError, RecordError) as exc:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
except SiteWriteError as exc:  # the environment, not the arguments: exit 1
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(1) from None
print(f"leaderboard written to {index}")
