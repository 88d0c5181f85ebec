"""Build an export in a child process, so the threads of the calling process keep running.

Exporting the encoder (``torch.onnx.export``, ``openvino.convert_model``) or the box decoder is
Python and C++ code that holds the GIL for stretches of 0.1-1.4 s over a minute or more. In the
napari dock the build runs in a worker thread, and the GUI thread cannot draw during those
stretches (measured: docs/benchmark-speed.md, "Ours or napari's"). With :func:`build_in_child`
on, a missing export is built by ``python -m casam.runtime._child`` into the same checked store
(``_store``, under its file lock) while the caller waits without the GIL; the caller then loads
the folder as usual, after the store's digest check. If the child fails, the caller builds the
export itself, as before: slower for the GUI, never a different result.

The child rebuilds the backbone from its recipe (registry name, checkpoint file), so only
backbones made by ``casam.sam.get_backbone`` can build this way.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

log = logging.getLogger("casam.runtime")

_enabled = False
#: A child still building after this long is killed and the caller builds in-process (a build
#: takes 15-90 s on the 2-core machines measured; a hung child must not hang the dock).
CHILD_TIMEOUT_S = 1800


def build_in_child(on: bool = True) -> None:
    """Build missing exports in a child process from now on (``on``), or in this one."""
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


def build_missing(
    recipe: tuple, root, fields: dict, part: str, runtime: str = "", batch: int = 1
) -> None:
    """Called before ``fetch_or_build(root, fields, ...)``: with child builds on and a
    ``recipe``, a missing export is built by a child first; if it fails, ``fetch_or_build``
    builds it in this process as before."""
    from casam.runtime._store import is_built

    if recipe and _enabled and not is_built(root, fields):
        build(recipe, part, runtime, batch)


def build(recipe: tuple[str, str], part: str, runtime: str = "", batch: int = 1) -> bool:
    """Build ``part`` ("encoder" with ``runtime`` and ``batch``, or "box-decoder") of the
    backbone ``recipe`` in a child process; True when it succeeded."""
    from casam.runtime._store import runtime_cache_dir

    spec = {"backbone": recipe[0], "checkpoint": recipe[1], "part": part}
    spec.update(runtime=runtime, batch=batch)
    env = {**os.environ, "CASAM_RUNTIME_CACHE": str(runtime_cache_dir())}
    cmd = [sys.executable, "-m", "casam.runtime._child", json.dumps(spec)]
    try:
        res = subprocess.run(
            cmd, env=env, capture_output=True, text=True, check=False, timeout=CHILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:  # run() has killed it; its lock goes with it
        log.warning("building the %s in a child process took over %d s", part, CHILD_TIMEOUT_S)
        return False
    except OSError as e:
        log.warning("could not start a child process to build the %s (%s)", part, e)
        return False
    if res.returncode != 0:
        tail = (res.stderr or "").strip().splitlines()[-1:] or ["no message"]
        log.warning("building the %s in a child process failed: %s", part, tail[0][:200])
        return False
    return True


def main(argv: list[str]) -> int:
    """The child: build what ``argv[0]`` (a JSON spec from :func:`build`) asks, then exit."""
    spec = json.loads(argv[0])
    from casam.runtime._decoder import BoxDecoderRuntime
    from casam.runtime._engines import EncoderSource
    from casam.runtime._select import RUNTIMES
    from casam.sam import get_backbone

    bb = get_backbone(spec["backbone"], spec["checkpoint"] or None, "cpu", runtime="torch")
    if spec["part"] == "box-decoder":
        parts = (bb.prompt_encoder, bb.mask_decoder, bb._image_pe)
        dec = BoxDecoderRuntime(bb.identity, bb.digest, lambda: parts)
        return 0 if dec.prepare() else 1
    source = EncoderSource(bb.identity, bb.digest, bb.input_size, lambda: bb.image_encoder)
    RUNTIMES[spec["runtime"]][1](source).model(int(spec["batch"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
