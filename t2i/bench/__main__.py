"""Child entry of an isolated case: ``python -m t2i.bench SPEC.json OUT.json`` (see t2i.bench.cases.run_isolated)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path


def main(argv: list[str]) -> None:
    warnings.simplefilter("ignore")
    from t2i.bench.cases import run_case

    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run_case(spec)))


if __name__ == "__main__":
    main(sys.argv[1:])
