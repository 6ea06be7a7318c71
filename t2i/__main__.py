import os
import sys

# `python -m t2i` puts the working folder first on sys.path, so a stray .py file there (say, one that came with a
# downloaded checkpoint) could be imported by name; the `t2i` script never searches the working folder, nor does this.
if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from t2i.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
