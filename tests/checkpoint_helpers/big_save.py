"""Subprocess of the killed-save test: ``python big_save.py DIRECTORY SEED`` saves
``big_state.make_state(SEED)`` with ``rlbuf.checkpoint.save`` (the test SIGKILLs it midway)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from big_state import make_state  # noqa: E402

from rlbuf import checkpoint  # noqa: E402

if __name__ == "__main__":
    state = make_state(int(sys.argv[2]))
    state.storage["observation"].block_until_ready()
    print("saving", flush=True)
    checkpoint.save(sys.argv[1], state)
    print("saved", flush=True)
