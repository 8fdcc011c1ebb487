"""``python -m gpu_cnmf.bench``: the same as ``gpu-cnmf bench``."""
import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["bench"] + sys.argv[1:]))
