"""One TensorRT-RTX engine build in a process of its own: ``python -m trt_centerpoint.runtime.trt.rtx_process REQUEST``.

Started by ``runtime.trt.build.build_engine(builder="tensorrt-rtx")`` with ``POLYGRAPHY_USE_TENSORRT_RTX=1``, so
Polygraphy binds TensorRT-RTX here whatever the parent process imported (that module's docstring says why).
REQUEST is the JSON of ``build_engine``'s arguments. The build writes its files as it would in place; a
``UserError`` comes back as one marked line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import sys

from trt_centerpoint.errors import UserError
from trt_centerpoint.runtime.trt.build import ERROR_MARK, RTX_ENV, build_engine
from trt_centerpoint.runtime.trt.env import polygraphy_uses_rtx


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not polygraphy_uses_rtx():
            raise UserError(f"{__name__} must run with {RTX_ENV}=1 (Polygraphy binds its TensorRT at import)")
        request = json.loads(argv[0])
        build_engine(**request, builder="tensorrt-rtx")
    except UserError as exc:
        print(f"{ERROR_MARK}{exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
