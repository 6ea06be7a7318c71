"""Run the mutation list: each deliberately broken copy of the code must make its named tests fail.

    python tests/mutations/run_mutations.py                 # every entry of mutations.toml
    python tests/mutations/run_mutations.py ema-frozen kl-sum   # some entries, by name
    python tests/mutations/run_mutations.py --list

For each entry the repository's files (tracked and untracked, not ignored) are copied to a temporary folder, the one
replacement is applied there (it fails loudly unless the original snippet occurs exactly once), and the entry's
tests run with pytest against that copy. KILLED: the tests failed, as they must; SURVIVED: they passed, so they do
not catch that break; ERROR: pytest could not run them (a wrong node id, a collection error). First the same tests
run once on the unbroken copy, which must pass. Exit status 0 only if every entry was KILLED.

Not part of the test suite (not named test_*.py); it takes minutes, as it runs some slow tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIST = Path(__file__).resolve().parent / "mutations.toml"


def load(path: Path = LIST) -> list[dict]:
    entries = tomllib.loads(path.read_text(encoding="utf-8"))["mutation"]
    names = [e["name"] for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SystemExit(f"{path}: duplicate names {duplicates}")
    for e in entries:
        missing = {"name", "description", "file", "original", "replacement", "tests"} - set(e)
        if missing:
            raise SystemExit(f"{path}: entry {e.get('name')!r} lacks {sorted(missing)}")
    return entries


def copy_repository(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():  # deleted-but-tracked files are skipped
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def apply(copy: Path, entry: dict) -> None:
    path = copy / entry["file"]
    text = path.read_text(encoding="utf-8")
    count = text.count(entry["original"])
    if count != 1:
        raise SystemExit(f"{entry['name']}: the original snippet occurs {count} times in {entry['file']} (need 1)")
    path.write_text(text.replace(entry["original"], entry["replacement"]), encoding="utf-8")


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    # the copy's parent is a temporary folder: point the parity tests at this checkout's fixtures explicitly
    env.setdefault("T2I_GOLDEN", str((ROOT.parent / "shared" / "golden").resolve()))
    env["PYTHONPATH"] = str(copy)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def run_tests(copy: Path, tests: list[str], timeout: float) -> tuple[int, float, str]:
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=copy, env=environment(copy), capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return -1, time.perf_counter() - start, "timed out"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, time.perf_counter() - start, lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="entries to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the entries and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on the unbroken copy")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    args = parser.parse_args(argv)

    entries = load()
    if args.names:
        unknown = sorted(set(args.names) - {e["name"] for e in entries})
        if unknown:
            raise SystemExit(f"unknown entries {unknown}; see --list")
        entries = [e for e in entries if e["name"] in args.names]
    if args.list:
        for e in entries:
            print(f"{e['name']:38} {e['file']:34} {e['description']}")
        return 0

    with tempfile.TemporaryDirectory(prefix="t2i_mutations_") as tmp:
        base = copy_repository(Path(tmp) / "base")
        for e in entries:  # every snippet must match before anything runs
            apply(base, {**e, "replacement": e["original"]})  # a no-op replacement that checks the count
        if not args.no_baseline:
            tests = list(dict.fromkeys(t for e in entries for t in e["tests"]))
            code, seconds, summary = run_tests(base, tests, args.timeout * 2)
            print(f"baseline ({len(tests)} test ids, unbroken code): {summary} [{seconds:.0f} s]", flush=True)
            if code != 0:
                print("the tests fail on the unbroken code: fix that first", file=sys.stderr)
                return 2
        rows = []
        for e in entries:
            copy = Path(tmp) / e["name"]
            shutil.copytree(base, copy)
            apply(copy, e)
            code, seconds, summary = run_tests(copy, e["tests"], args.timeout)
            result = "KILLED" if code == 1 else "SURVIVED" if code == 0 else f"ERROR({code})"
            rows.append((e["name"], e["file"], result, seconds, e["description"]))
            print(f"{result:9} {e['name']:38} {seconds:6.0f} s  {summary}", flush=True)
            shutil.rmtree(copy, ignore_errors=True)

    print()
    print("| mutation | file | result | time | what is broken |")
    print("|---|---|---|---|---|")
    for name, file, result, seconds, description in rows:
        print(f"| {name} | {file} | {result} | {seconds:.0f} s | {description} |")
    bad = [r for r in rows if r[2] != "KILLED"]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} killed" + (f"; not killed: {[r[0] for r in bad]}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
